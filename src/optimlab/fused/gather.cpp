/* The per-step bookkeeping of the fused path for one param group, in one call (static code,
 * not generated; optional: without it the runner does the same in Python).
 *
 * In the steady state a step must, for every param: check it is the param the plan was built
 * for, still on the same memory; fetch its .grad; check the kernel can read that grad in place;
 * note the grad's address in the kernel's pointer table; and bump the param's version counter
 * as any in-place update does. From Python that is ~0.4 us per param (1,000 small tensors:
 * more time than the kernel); here it is a few ns.
 *
 * Only torch's C headers for TensorImpl/TensorBase are used (a 2 s compile, not the 20 s of
 * torch/extension.h). The Python object layout below is torch's THPVariable
 * (torch/csrc/autograd/python_variable.h: PyObject_HEAD, then the at::Tensor); the loader
 * verifies it against Tensor._cdata and a round trip before the helper is ever used.
 */
#include <Python.h>
#include <ATen/core/TensorBase.h>

#include <cstdint>
#include <unordered_map>

namespace {

struct Variable {  // the head of torch's THPVariable
    PyObject_HEAD
    at::TensorBase cdata;
};

inline c10::TensorImpl *impl_of(PyObject *obj) {
    return reinterpret_cast<Variable *>(obj)->cdata.unsafeGetTensorImpl();
}

/* Dispatch keys of tensors that wrap others (a Python subclass such as DTensor,
   functionalization, functorch): their data pointer is not where their values are. */
const c10::DispatchKeySet kWrappers = c10::DispatchKeySet(c10::DispatchKey::Python) |
    c10::DispatchKeySet(c10::DispatchKey::PythonTLSSnapshot) |
    c10::DispatchKeySet(c10::DispatchKey::Functionalize) |
    c10::DispatchKeySet(c10::DispatchKey::FuncTorchBatched) |
    c10::DispatchKeySet(c10::DispatchKey::FuncTorchGradWrapper);

/* The grad can be read in place: a defined, strided CPU tensor that wraps nothing, with real
   storage, the param's dtype and element count, contiguous (the runner uses this helper only
   for contiguous params). */
inline bool readable_grad(c10::TensorImpl *p, const at::TensorBase &g) {
    if (!g.defined()) return false;
    c10::TensorImpl *gi = g.unsafeGetTensorImpl();
    return gi->layout() == c10::kStrided && gi->device_type() == c10::DeviceType::CPU &&
           !gi->key_set().has_any(kWrappers) && gi->has_storage() &&
           (gi->numel() == 0 || gi->mutable_data() != nullptr) &&
           gi->dtype() == p->dtype() && gi->numel() == p->numel() && gi->is_contiguous();
}

/* Whether `state` is as a plan read it (state_snapshot.py). meta: {the address of that state
 * dict, its size, n, the address of the snapshot's list of n params, then the addresses of
 * pos (from optimlab_state_positions), dicts, sizes and values}. Checked: the same dict with
 * as many entries; for each i with pos[i] >= 0, the entry PyDict_Next finds from pos[i] is
 * still params[i] -> dicts[i] (a moved entry fails: the caller rebuilds), that dict still has
 * sizes[i] entries, and all their values, in order, are the objects `values`. Pointers are
 * only compared, never followed, except the snapshot's own (it keeps them alive). */
inline bool same_state(PyObject *state, const uint64_t *meta) {
    if (reinterpret_cast<uint64_t>(state) != meta[0] || PyDict_GET_SIZE(state) != static_cast<Py_ssize_t>(meta[1]))
        return false;
    const int64_t n = static_cast<int64_t>(meta[2]);
    PyObject *params = reinterpret_cast<PyObject *>(meta[3]);
    const int64_t *pos = reinterpret_cast<const int64_t *>(meta[4]);
    const uint64_t *dicts = reinterpret_cast<const uint64_t *>(meta[5]);
    const int64_t *sizes = reinterpret_cast<const int64_t *>(meta[6]);
    const uint64_t *values = reinterpret_cast<const uint64_t *>(meta[7]);
    int64_t v = 0;
    PyObject *key, *value, *k, *x;
    for (int64_t i = 0; i < n; ++i) {
        if (pos[i] < 0) continue;
        Py_ssize_t at = pos[i], inner = 0;
        if (!PyDict_Next(state, &at, &key, &value) || key != PyList_GET_ITEM(params, i) ||
            reinterpret_cast<uint64_t>(value) != dicts[i] || PyDict_GET_SIZE(value) != sizes[i])
            return false;
        while (PyDict_Next(value, &inner, &k, &x))
            if (reinterpret_cast<uint64_t>(x) != values[v++]) return false;
    }
    return true;
}

}  // namespace

extern "C" {

/* The TensorImpl address the layout above finds in `obj` (compared with Tensor._cdata). */
uint64_t optimlab_impl_of(PyObject *obj) {
    return reinterpret_cast<uint64_t>(impl_of(obj));
}

/* For i < n: params[i] must be the object objs[i] whose data is still at pptrs[i], with a grad
 * the kernel can read in place; *dest[i] receives the grad's address. If all n pass (and, with
 * `meta` not null, `state` is as the plan read it: same_state), the params' versions are
 * bumped and 0 is returned; else nothing is bumped and the result is i + 1 for the first
 * param that failed, n + 1 for the list, n + 2 for the state (the caller takes the Python
 * path, which explains or rebuilds), or -1 if torch raised. The GIL is held (ctypes.PyDLL). */
int64_t optimlab_gather(PyObject *params, const uint64_t *objs, const uint64_t *pptrs,
                        uint64_t *const *dest, int64_t n, PyObject *state, const uint64_t *meta) {
    if (!PyList_Check(params) || PyList_GET_SIZE(params) != n) return n + 1;
    if (meta != nullptr && !same_state(state, meta)) return n + 2;
    try {
        for (int64_t i = 0; i < n; ++i) {
            PyObject *obj = PyList_GET_ITEM(params, i);
            if (reinterpret_cast<uint64_t>(obj) != objs[i]) return i + 1;
            c10::TensorImpl *p = impl_of(obj);
            if (reinterpret_cast<uint64_t>(p->mutable_data()) != pptrs[i]) return i + 1;
            // TensorImpl::grad() returns at::Tensor, a TensorBase with no members of its own
            const auto &g = reinterpret_cast<const at::TensorBase &>(p->grad());
            if (!readable_grad(p, g)) return i + 1;
            *dest[i] = reinterpret_cast<uint64_t>(g.unsafeGetTensorImpl()->mutable_data());
        }
        for (int64_t i = 0; i < n; ++i) {
            c10::TensorImpl *p = impl_of(PyList_GET_ITEM(params, i));
            if (!p->is_inference()) p->bump_version();  // as torch._C._increment_version
        }
    } catch (...) {
        return -1;
    }
    return 0;
}

/* The pointer tables of the custom op optimlab::fused_step (kernel_op.py) in one call: the data
 * addresses of the tensors of each list in the tuple `lists`, written one after another to
 * `out` (at most `cap`); the versions of the tensors of list k are bumped where bit k of
 * `bump` is set (the lists the kernel writes). Returns the number written, or -1 (not lists,
 * too many, or torch raised: the caller takes the Python path). The GIL is held. */
int64_t optimlab_pointers(PyObject *lists, uint64_t *out, int64_t cap, int64_t bump) {
    if (!PyTuple_Check(lists)) return -1;
    int64_t n = 0;
    try {
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(lists); ++k) {
            PyObject *list = PyTuple_GET_ITEM(lists, k);
            if (!PyList_Check(list) || n + PyList_GET_SIZE(list) > cap) return -1;
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
                c10::TensorImpl *t = impl_of(PyList_GET_ITEM(list, i));
                out[n++] = reinterpret_cast<uint64_t>(t->mutable_data());
            }
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(lists); ++k) {
            if (!((bump >> k) & 1)) continue;
            PyObject *list = PyTuple_GET_ITEM(lists, k);
            for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); ++i) {
                c10::TensorImpl *t = impl_of(PyList_GET_ITEM(list, i));
                if (!t->is_inference()) t->bump_version();
            }
        }
    } catch (...) {
        return -1;
    }
    return n;
}

/* At a plan's build (state_snapshot.py): pos[i] receives the position from which PyDict_Next
 * finds the key params[i] of the dict `state`, or -1 where it is absent; no key is hashed.
 * Returns 0, or -1 (not a dict and a list of n). The GIL is held. */
int64_t optimlab_state_positions(PyObject *state, PyObject *params, int64_t *pos, int64_t n) {
    if (!PyDict_Check(state) || !PyList_Check(params) || PyList_GET_SIZE(params) != n) return -1;
    std::unordered_map<PyObject *, int64_t> index;
    for (int64_t i = 0; i < n; ++i) {
        index.emplace(PyList_GET_ITEM(params, i), i);
        pos[i] = -1;
    }
    Py_ssize_t at = 0, before = 0;
    PyObject *key, *value;
    while (before = at, PyDict_Next(state, &at, &key, &value)) {
        auto found = index.find(key);
        if (found != index.end()) pos[found->second] = before;
    }
    return 0;
}

/* optimlab_state_same(state, meta): 1 if `state` is as a plan read it, else 0. */
int64_t optimlab_state_same(PyObject *state, const uint64_t *meta) {
    return same_state(state, meta) ? 1 : 0;
}

}  // extern "C"
