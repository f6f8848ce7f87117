"""C for one element-wise pass of a rule with reductions (see :mod:`.passes`).

A pass is printed from the rule's traced graph with the fused kernel's node printer
(:func:`.codegen._expr`: same operation order, no FMA contraction, torch's rounding), and
run like the fused kernel: all tensors of a bucket concatenated and cut into equal chunks
shared by ``pool.c``'s threads. Besides storing outputs it may

* accumulate whole-tensor sums (of x^2, x, a*b) in double, in a loop the compiler
  vectorises (``omp simd reduction``: the lanes' partial sums are added at the end); each (chunk, tensor) piece writes its partial sum to its own slot
  ``chunk + tensor`` (one writer per slot, so the result does not depend on which thread
  ran what), and the caller adds the slots of each tensor in order;
* write a per-element value to a temporary buffer, for a torch call that needs it as a
  tensor (Muon's momentum before Newton-Schulz).

Buffers have their own storage types: the parameter's (bfloat16/float16 loaded and rounded
as in the fused kernel) for the parameter, grad and state, the compute type for
temporaries and torch results read back.
"""

from __future__ import annotations

from .codegen import _PRELUDE, DTYPES, _expr, chunk_walker

_LOAD = {
    "float32": ("float", "{}", "{}"),
    "float64": ("double", "{}", "{}"),
    "bfloat16": ("uint16_t", "bf16_load({})", "bf16_store({})"),
    "float16": ("uint16_t", "f16_load({})", "f16_store({})"),
}
_TERMS = {"red_sumsq": "(double){0} * (double){0}", "red_sum": "(double){0}", "red_dot": "(double){0} * (double){1}"}


def generate(body_nodes, buffers, loads, stores, scalars, reductions, compute_dtype: str,
             symbol: str = "optimlab_pass", factors=None) -> str:
    """C source of one pass.

    ``body_nodes``: the per-element nodes to evaluate, in graph order; ``buffers``: list of
    (storage dtype name, written) in argument order; ``loads``: node index -> buffer index
    for nodes read from a buffer; ``stores``: list of (buffer index, node); ``scalars``:
    nodes read from the per-tensor scalar slots; ``reductions``: reduction nodes (their
    arguments are computed in this pass); ``factors``: outer product node -> the buffers of
    its (n, 1) and (1, m) factors: the element (i, j) is ``R[i] * C[j]``, the pieces of a
    tensor cut at its rows (of ``inner`` elements), so that R is one number a piece and C
    is read from the piece's column on.
    """
    factors = factors or {}
    broadcast = {b: k for pair in factors.values() for b, k in zip(pair, ("rows", "cols"))}
    compute = DTYPES[compute_dtype][1]
    slot = {n.index: j for j, n in enumerate(scalars)}

    def ref(x):
        if x.index in slot:
            return f"c{slot[x.index]}"
        return f"e{x.index}"

    params = ", ".join(f"{'' if written else 'const '}{_LOAD[d][0]}* restrict b{i}"
                       for i, (d, written) in enumerate(buffers))
    nr = len(reductions)
    lines = ["__attribute__((noinline))",
             f"static void elements(int64_t n, const double* restrict sc, double* restrict red, {params}) {{",
             "    (void)sc; (void)red;"]
    lines += [f"    const {compute} c{j} = ({compute})sc[{j}];" for j in range(len(scalars))]
    lines += [f"    double r{j} = 0;" for j in range(nr)]
    lines += [f"    #pragma omp simd reduction(+:{', '.join(f'r{j}' for j in range(nr))})" if nr else "",
              "    for (int64_t i = 0; i < n; ++i) {"]
    for n in body_nodes:
        if n.index in factors:
            (r, c), load = factors[n.index], (lambda b, at: _LOAD[buffers[b][0]][1].format(f"b{b}[{at}]"))
            lines.append(f"        const {compute} e{n.index} = ({compute}){load(r, 0)} * ({compute}){load(c, 'i')};")
        elif n.index in loads:
            b = loads[n.index]
            expr = _LOAD[buffers[b][0]][1].format(f"b{b}[i]")
            lines.append(f"        const {compute} e{n.index} = ({compute}){expr};")
        else:
            lines.append(f"        const {compute} e{n.index} = {_expr(n, ref, compute)};")
    for j, r in enumerate(reductions):
        lines.append(f"        r{j} += " + _TERMS[r.op].format(*map(ref, r.args)) + ";")
    for b, n in stores:
        lines.append(f"        b{b}[i] = " + _LOAD[buffers[b][0]][2].format(ref(n)) + ";")
    lines.append("    }")
    lines += [f"    red[{j}] = r{j};" for j in range(nr)]
    lines.append("}")

    nsc = max(len(scalars), 1)
    if not broadcast:
        call_args = ", ".join(f"({_LOAD[d][0]}*)j->bufs[{i} * nt + t] + off" for i, (d, _) in enumerate(buffers))
        segment = (f"double part[{max(nr, 1)}]; elements(end - lo, j->scratch + t * {nsc}, part, {call_args}); "
                   f"for (int r = 0; r < {nr}; ++r) j->red[r * j->nslots + c + t] = part[r];")
    else:  # the piece cut at rows: the sums of its parts added in order, in double
        at = {"rows": "row", "cols": "col"}
        call_args = ", ".join(f"({_LOAD[d][0]}*)j->bufs[{i} * nt + t] + {at.get(broadcast.get(i), 's')}"
                              for i, (d, _) in enumerate(buffers))
        segment = (f"double acc[{max(nr, 1)}] = {{0}}; const int64_t w = j->inner; "
                   "for (int64_t s = off, stop = off + (end - lo); s < stop; ) { "
                   "const int64_t row = s / w, col = s - row * w; "
                   "const int64_t e = stop < (row + 1) * w ? stop : (row + 1) * w; "
                   f"double part[{max(nr, 1)}]; elements(e - s, j->scratch + t * {nsc}, part, {call_args}); "
                   f"for (int r = 0; r < {nr}; ++r) acc[r] += part[r]; s = e; }} "
                   f"for (int r = 0; r < {nr}; ++r) j->red[r * j->nslots + c + t] = acc[r];")
    driver = f"""
typedef void (*chunk_fn)(void*, int64_t);
typedef void (*run_fn)(chunk_fn, void*, int64_t, int);
struct job {{ int64_t nt, total, chunk, nslots; void* const* bufs; const double* scratch;
              const int64_t* offs; double* red; int64_t inner; }};

{chunk_walker(segment)}
void {symbol}(int64_t nt, void* const* bufs, const double* scratch, const int64_t* offs,
              double* red, int64_t chunk_size, int64_t nslots, int nthreads, void* run, int64_t inner) {{
    const int64_t total = offs[nt];
    if (total == 0) return;
    struct job j = {{nt, total, chunk_size, nslots, bufs, scratch, offs, red, inner}};
    ((run_fn)run)(chunk, &j, (total + chunk_size - 1) / chunk_size, nthreads);
}}
"""
    return "\n".join([_PRELUDE, "\n".join(lines), driver])


def chunk_size(total: int, nthreads: int) -> int:
    """The fused kernel's chunking (see :mod:`.codegen`): one chunk when small, else 8 per
    thread of 16K-256K elements."""
    if total <= 32768:
        return max(total, 1)
    size = total // (max(nthreads, 1) * 8)
    return min(max(size, 16384), 262144)
