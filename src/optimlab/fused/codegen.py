"""C code generation from a :class:`~optimlab.fused.trace.Trace`.

One C function per (rule, flags, zero pattern, lazy-state pattern, parameter dtype,
0-dim state dtypes). It takes, for ``nt`` tensors, a table of buffer pointers
(``bufs[b * nt + t]``: param, grad, state...), the 0-dim state pointers, the
hyperparameter values and the prefix sums of the tensors' element counts, and

1. runs the *scalar pass* serially: for each tensor, the scalar nodes in double (the
   Python floats of the reference path), memoised on the 0-dim state inputs since most
   tensors share one ``step``; it writes the new 0-dim state (``step += 1``) itself;
2. runs the *element pass* through the thread pool of ``pool.c``: the concatenation of
   all tensors is cut into equal chunks, so one big tensor and a thousand small ones
   balance alike.

Per-element nodes are evaluated in the DAG's order, with no contraction into FMAs and
no reassociation (``-ffp-contract=off``, no ``-ffast-math``): torch's per-op rounding.
The one op that differs is ``sqrt``: IEEE-exact here, within an ulp in torch (MKL/Sleef).

Vector width: the element loop of a float32/float64 kernel that does little per byte it
moves (SGD, momentum, AMSGrad: see :func:`narrow_vectors`) asks GCC for 256-bit vectors
on x86; the others, and bfloat16/float16 (integer conversions per element), keep
``-march=native``'s width, 512 bits with AVX-512. The width changes no result: every op
is element-wise.
"""

from __future__ import annotations

from .trace import MASKS, Node, Trace, live

# storage type, compute type, load expression, store expression ('{}' = value)
DTYPES = {
    "float32": ("float", "float", "{}", "{}"),
    "float64": ("double", "double", "{}", "{}"),
    "bfloat16": ("uint16_t", "float", "bf16_load({})", "bf16_store({})"),
    "float16": ("uint16_t", "float", "f16_load({})", "f16_store({})"),
}
SCALAR_STATE_TYPES = {"float32": "float", "float64": "double"}

_PRELUDE = r"""
#if defined(__F16C__)
#include <immintrin.h>
#endif
#include <stdint.h>
#include <string.h>
#include <math.h>

static inline float bf16_load(uint16_t x) {
    uint32_t u = (uint32_t)x << 16; float f; memcpy(&f, &u, 4); return f;
}
/* Round to nearest even, NaN -> 0x7fc0: c10::BFloat16's round_to_nearest_even. */
static inline uint16_t bf16_store(float f) {
    uint32_t u; memcpy(&u, &f, 4);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return f != f ? (uint16_t)0x7fc0 : (uint16_t)r;
}
/* IEEE half <-> float with integer ops only, so the loops vectorise on any x86/ARM
   (GCC 12 does not vectorise _Float16 conversions). Exact (load) and round to nearest
   even (store), as c10::Half; checked against torch on all halves. */
static inline float f16_load(uint16_t h) {
    const uint32_t em = (uint32_t)h & 0x7fffu;
    const float sub = (float)(int32_t)em * 0x1p-24f;
    uint32_t subb; memcpy(&subb, &sub, 4);
    const uint32_t normal = (em << 13) + ((uint32_t)(127 - 15) << 23);
    const uint32_t infnan = (em << 13) | 0x7f800000u;
    const uint32_t r = (em >= 0x7c00u ? infnan : (em >= 0x0400u ? normal : subb))
                       | (((uint32_t)h & 0x8000u) << 16);
    float f; memcpy(&f, &r, 4); return f;
}
static inline uint16_t f16_store(float x) {
    uint32_t f; memcpy(&f, &x, 4);
    const uint32_t sign = (f >> 16) & 0x8000u;
    f &= 0x7fffffffu;
    float a; memcpy(&a, &f, 4);
    const float t = a + 0.5f;  /* subnormal halves: the float add rounds at the right bit */
    uint32_t tb; memcpy(&tb, &t, 4);
    const uint32_t sub = tb - 0x3f000000u;
    const uint32_t normal = (f + ((uint32_t)(15 - 127) << 23) + 0xfffu + ((f >> 13) & 1u)) >> 13;
    const uint32_t infnan = f > 0x7f800000u ? 0x7e00u : 0x7c00u;
    return (uint16_t)((f >= 0x47800000u ? infnan : (f < 0x38800000u ? sub : normal)) | sign);
}
"""

_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}

#: per-element ops that cost several cycles per vector (a few per 8 floats on Zen 4)
_SLOW = ("div", "sqrt", "pow")
#: GCC on x86: 256-bit vectors for one function (the attribute exists since GCC 8)
_NARROW = ("#if defined(__GNUC__) && __GNUC__ >= 8 && !defined(__clang__) \\\n"
           "    && (defined(__x86_64__) || defined(__i386__))\n"
           '__attribute__((target("prefer-vector-width=256")))\n'
           "#endif")


def narrow_vectors(tr: Trace, dtype: str) -> bool:
    """Whether the element loop asks for 256-bit vectors: a float32/float64 kernel that does
    little per byte it moves, with fewer than one slow op (:data:`_SLOW`) per two memory
    streams and fewer than three other ops per two streams (streams: buffers read plus
    buffers written).

    Why: on AVX-512 machines ``-march=native`` vectorises with 512-bit registers, but on
    the reference machine (AMD EPYC, Zen 4, one thread) a loop that only streams runs
    faster with 256-bit loads, measured side by side on the same tensors: SGD (read p
    and g, write p) 5-14%, momentum 2-10%, AMSGrad, ASGD and schedule-free SGD 2-8%, a
    read-only sum 3%. It is what torch runs: its element-wise kernels (``add_``, the fused
    Adam) are its AVX2 builds even where ``torch.backends.cpu.get_cpu_capability()`` says
    AVX512. Where the loop computes more per byte, fewer and wider instructions win
    instead: Adam, AdamW, Adagrad, NAdam, AdaBelief (4 slow ops per 7 streams) 4-8%,
    Lion, Adadelta, RAdam (9-13 other ops per 5-7 streams) 1-5%, and bfloat16 8-22%,
    whose conversions are integer work per element."""
    if dtype not in ("float32", "float64"):
        return False
    roots = list(tr.elem_outputs.values()) + list(tr.scalar_outputs.values())
    needed = live(roots)
    ops = [n.op for n in tr.graph.nodes if n.index in needed and not n.scalar and n.op != "ein"]
    slow = sum(op in _SLOW for op in ops)
    streams = len(tr.reads) + len(tr.elem_outputs)
    return 2 * slow < streams and 2 * (len(ops) - slow) < 3 * streams


def _expr(n: Node, ref, compute: str) -> str:
    """C for one node in ``compute`` ("double" for scalar nodes, the kernel's compute type
    for per-element ones). ``__builtin_sqrt`` is the correctly rounded sqrt (-fno-math-errno)."""
    a = [ref(x) for x in n.args]
    f = "f" if compute == "float" else ""
    if n.op in _BINARY:
        return f"{a[0]} {_BINARY[n.op]} {a[1]}"
    if n.op == "pow":
        return f"pow{f}({a[0]}, {a[1]})"
    if n.op in MASKS:  # 1 or 0 in the compute type; IEEE comparisons (false with a NaN but !=)
        return f"({compute})({a[0]} {MASKS[n.op]} {a[1]})"
    return {
        "neg": lambda: f"-{a[0]}",
        "sqrt": lambda: f"__builtin_sqrt{f}({a[0]})",
        "abs": lambda: f"__builtin_fabs{f}({a[0]})",
        # NaN-propagating like torch.maximum/minimum; ties return the second operand
        # (as vmaxps/vminps, torch's vectorised loop)
        "max": lambda: f"(({a[0]} != {a[0]} || {a[0]} > {a[1]}) ? {a[0]} : {a[1]})",
        "min": lambda: f"(({a[0]} != {a[0]} || {a[0]} < {a[1]}) ? {a[0]} : {a[1]})",
        # torch.sign: sign(NaN) = 0, sign(-0.0) = +0.0
        "sign": lambda: f"({compute})(({a[0]} > 0) - ({a[0]} < 0))",
        # torch.clamp's halves: x is kept on ties (-0.0 stays) and when NaN
        "clamp_min": lambda: f"({a[0]} < {a[1]} ? {a[1]} : {a[0]})",
        "clamp_max": lambda: f"({a[0]} > {a[1]} ? {a[1]} : {a[0]})",
        "where": lambda: f"({_condition(n.args[0], ref, a[0])} ? {a[1]} : {a[2]})",
        "float32": lambda: f"({compute})(float)({a[0]})",
    }[n.op]()


def _condition(m: Node, ref, value: str) -> str:
    """The test of a ``where``: a per-element comparison is tested as itself (a vector
    compare feeding the blend), not as its 1/0 value compared with 0 again; the same
    truth, so the same result."""
    if m.op in MASKS and not m.scalar:
        return f"({ref(m.args[0])} {MASKS[m.op]} {ref(m.args[1])})"
    return f"{value} != 0"


def _const(v: float) -> str:
    if v != v:
        return "NAN"
    if v in (float("inf"), float("-inf")):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"({v.hex()})"


def generate(tr: Trace, dtype: str, scalar_state_dtypes: dict,
             symbol: str = "optimlab_step") -> tuple[str, int]:
    """C source for ``tr`` on parameters of ``dtype`` ('float32', ...), and the number
    of per-tensor scalars (doubles) the caller's ``scratch`` must hold per tensor.

    ``scalar_state_dtypes`` maps each 0-dim state key to 'float32' or 'float64'.
    """
    storage, compute, load, store = DTYPES[dtype]
    nodes = tr.graph.nodes
    roots = list(tr.elem_outputs.values()) + list(tr.scalar_outputs.values())
    needed = live(roots)

    # scalar nodes feeding element nodes (or stored to element buffers directly)
    boundary: list[Node] = []
    for n in nodes:
        if n.index in needed and not n.scalar:
            boundary.extend(a for a in n.args if a.scalar and a not in boundary)
    boundary.extend(n for n in tr.elem_outputs.values() if n.scalar and n not in boundary)
    nsc = len(boundary)
    sin = tr.scalar_inputs
    souts = list(tr.scalar_outputs.items())
    hp_index = {name: i for i, (name, _, _) in enumerate(tr.hps)}

    # ---- scalar pass
    def sref(x: Node) -> str:
        if x.op == "const":
            return _const(x.value)
        if x.op == "hp":
            return f"hp[{hp_index[x.name]}]"
        if x.op == "sin":
            return f"si[{sin.index(x.name)}]"
        return f"s{x.index}"

    lines = ["static void scalars(const double* restrict hp, const double* restrict si, double* restrict so) {",
             "    (void)hp; (void)si; (void)so;"]
    sst_t = {k: SCALAR_STATE_TYPES[scalar_state_dtypes[k]] for k in sin}
    for n in nodes:
        if n.index in needed and n.scalar and n.op not in ("const", "hp", "sin"):
            # "stored": rounded to the dtype its 0-dim state is kept in (float: as torch's float32 state)
            expr = (f"(double)({sst_t[n.name]})({sref(n.args[0])})" if n.op == "stored"
                    else _expr(n, sref, "double"))
            lines.append(f"    const double s{n.index} = {expr};")
    for j, b in enumerate(boundary):
        lines.append(f"    so[{j}] = {sref(b)};")
    for j, (_, n) in enumerate(souts):
        lines.append(f"    so[{nsc + j}] = {sref(n)};")
    lines.append("}")
    scalar_fn = "\n".join(lines)

    # ---- element pass
    bidx = {name: i for i, name in enumerate(tr.buffers)}
    written = set(tr.elem_outputs)

    def eref(x: Node) -> str:
        if x.scalar:
            return f"c{boundary.index(x)}"
        return f"e{x.index}"

    params = ", ".join(
        f"{'' if name in written else 'const '}{storage}* restrict b{i}" for i, name in enumerate(tr.buffers)
    )
    lines = ["__attribute__((noinline))"] + ([_NARROW] if narrow_vectors(tr, dtype) else []) + [
             f"static void elements(int64_t n, const double* restrict sc, {params}) {{",
             "    (void)sc;"]
    for j in range(nsc):
        lines.append(f"    const {compute} c{j} = ({compute})sc[{j}];")

    def body(indent: str, load_of, store_to) -> list:
        out = []
        for n in nodes:
            if n.index not in needed or n.scalar:
                continue
            expr = load_of(bidx[n.name]) if n.op == "ein" else _expr(n, eref, compute)
            out.append(f"{indent}const {compute} e{n.index} = {expr};")
        out += [store_to(bidx[name], eref(n), indent) for name, n in tr.elem_outputs.items()]
        return out

    elementwise = body("        ", lambda b: load.format(f"b{b}[i]"),
                       lambda b, v, ind: f"{ind}b{b}[i] = {store.format(v)};")
    if dtype == "float16":
        lines += _f16_blocks(tr, bidx, body, elementwise)
    else:
        lines.append("    for (int64_t i = 0; i < n; ++i) {")
        lines += elementwise
        lines.append("    }")
    lines.append("}")
    elem_fn = "\n".join(lines)

    # ---- driver
    nb = len(tr.buffers)
    nsi = len(sin)
    nout = nsc + len(souts)
    read_in = "\n".join(
        f"        in[{j}] = (double)*(const {sst_t[k]}*)sst[{j} * nt + t];" for j, k in enumerate(sin)
    )
    write_out = "\n".join(
        f"        *({sst_t[k]}*)sst[{sin.index(k)} * nt + t] = ({sst_t[k]})out[{nsc + j}];"
        for j, (k, _) in enumerate(souts)
    )
    call_args = ", ".join(f"({storage}*)j->bufs[{i} * nt + t] + off" for i in range(nb))
    driver = f"""
typedef void (*chunk_fn)(void*, int64_t);
typedef void (*run_fn)(chunk_fn, void*, int64_t, int);
struct job {{ int64_t nt, total, chunk; void* const* bufs; const double* scratch; const int64_t* offs; }};

{chunk_walker(f"elements(end - lo, j->scratch + t * {max(nsc, 1)}, {call_args});")}
void {symbol}(int64_t nt, void* const* bufs, void* const* sst, const double* hp,
              double* scratch, const int64_t* offs, int nthreads, void* run) {{
    double in[{max(nsi, 1)}] = {{0}}, prev[{max(nsi, 1)}] = {{0}}, out[{max(nout, 1)}] = {{0}};
    int have = 0;
    for (int64_t t = 0; t < nt; ++t) {{
{read_in}
        if (!have || memcmp(in, prev, sizeof in) != 0) {{
            scalars(hp, in, out);
            memcpy(prev, in, sizeof in);
            have = 1;
        }}
        memcpy(scratch + t * {max(nsc, 1)}, out, sizeof(double) * {max(nsc, 1)});
{write_out}
    }}
    const int64_t total = offs[nt];
    if (total == 0) return;
    /* one chunk when small; else 8 chunks per thread (a slow thread's can be taken over),
       of 16K-256K elements: long runs amortise the prefetchers' ramp-up at each chunk
       start (256K-element chunks measured 4-8% faster than 32K on large mixes) */
    int64_t size = total <= 32768 ? total : total / ((int64_t)(nthreads > 0 ? nthreads : 1) * 8);
    if (total > 32768) size = size < 16384 ? 16384 : (size > 262144 ? 262144 : size);
    struct job j = {{nt, total, size, bufs, scratch, offs}};
    ((run_fn)run)(chunk, &j, (total + size - 1) / size, nthreads);
}}
"""
    return "\n".join([_PRELUDE, scalar_fn, elem_fn, driver]), max(nsc, 1)


def _f16_blocks(tr: Trace, bidx: dict, body, elementwise: list) -> list:
    """float16 with the CPU's F16C conversions: blocks of 8 halves are widened to floats
    (``vcvtph2ps``, exact), the graph runs on float arrays the compiler vectorises, and
    the results are narrowed with round-to-nearest-even (``vcvtps2ph``, c10::Half's
    rounding); the tail, and CPUs without F16C, use the integer conversions."""
    reads = sorted({bidx[n.name] for n in tr.graph.nodes if n.op == "ein" and n.name in bidx})
    writes = [bidx[name] for name in tr.elem_outputs]
    out = ["#if defined(__F16C__)", "    int64_t i0 = 0;", "    for (; i0 + 8 <= n; i0 += 8) {"]
    for b in reads:
        out.append(f"        float w{b}[8]; _mm256_storeu_ps(w{b}, "
                   f"_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(b{b} + i0))));")
    for b in writes:
        out.append(f"        float r{b}[8];")
    out.append("        for (int k = 0; k < 8; ++k) {")
    out += body("            ", lambda b: f"w{b}[k]", lambda b, v, ind: f"{ind}r{b}[k] = {v};")
    out.append("        }")
    for b in writes:
        out.append(f"        _mm_storeu_si128((__m128i*)(b{b} + i0), _mm256_cvtps_ph("
                   f"_mm256_loadu_ps(r{b}), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));")
    out += ["    }", "    for (int64_t i = i0; i < n; ++i) {"] + elementwise + ["    }",
            "#else", "    for (int64_t i = 0; i < n; ++i) {"] + elementwise + ["    }", "#endif"]
    return out


def chunk_walker(segment: str) -> str:
    """The C function ``chunk(ctx, c)`` a kernel's thread pool calls for chunk ``c`` of the
    group's flat element range: it finds the first tensor of the chunk by binary search on
    ``j->offs`` and runs ``segment`` (C statements that may use ``j``, ``c``, ``t``, ``lo``,
    ``end`` and ``off``, the piece's offset in tensor ``t``) for each piece of a tensor the
    chunk covers. Shared by the fused kernel and the passes (:mod:`.passes_codegen`)."""
    return f"""static void chunk(void* ctx, int64_t c) {{
    const struct job* j = (const struct job*)ctx;
    const int64_t nt = j->nt;
    const int64_t* offs = j->offs;
    int64_t lo = c * j->chunk;
    const int64_t hi = lo + j->chunk < j->total ? lo + j->chunk : j->total;
    int64_t a = 0, b = nt;  /* binary search: the last t with offs[t] <= lo */
    while (b - a > 1) {{ const int64_t m = (a + b) / 2; if (offs[m] <= lo) a = m; else b = m; }}
    for (int64_t t = a; lo < hi; ++t) {{
        const int64_t end = offs[t + 1] < hi ? offs[t + 1] : hi;
        if (end > lo) {{
            const int64_t off = lo - offs[t];
            {segment}
            lo = end;
        }}
    }}
}}
"""
