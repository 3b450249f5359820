/* torchdevice._speedups: the optional C fast path of the device area.
 *
 * A Forwarder stands in for a torch function (torch.zeros, Tensor.to, ...)
 * and holds the original torch callable, the Python wrapper of
 * ops/device/redirect.py that maps CUDA devices, the device mapping cache the
 * wrapper reads (core/device.py DEVICE_CACHE, filled only by map_device), and
 * a rule. It passes the caller's argument array on (no tuple or dict built,
 * no Python frame run):
 *
 *   - to the original, untouched, when the rule proves there is nothing to
 *     map: no keyword "device" (or device=None); for Tensor.to also no first
 *     argument, or a first argument whose type is exactly torch.dtype;
 *   - to the original with the one device argument replaced by its cached
 *     mapping, when the cache has it: exactly what the wrapper does on a hit;
 *   - to the Python wrapper otherwise (a miss, an unhashable spec, pin_memory
 *     where the wrapper drops it, two devices, more than SMALL_CALL arguments).
 *
 * The wrapper stays the one source of behaviour: this file never decides what
 * a device maps to, it only reuses an answer map_device already stored.
 *
 * With the migration report on, a forwarder also holds the ``fast`` table of
 * the report's site for its API (core/report.py, _Site): instruction offset ->
 * (code, device spec, counter). A cache hit that maps the spec is counted here
 * when the table names the calling instruction with the same code object and
 * the same spec object (what the recording wrapper checks inline); any other
 * mapped call goes to the recording wrapper, which counts it and fills the
 * table. COUNTS_SITES is 0 where the interpreter has no PyFrame_GetLasti
 * (before 3.11): the report then keeps to the Python wrappers.
 *
 * Rules: FACTORY (the device is keyword "device"), FACTORY_PIN (the same, and
 * any "pin_memory" keyword goes to the wrapper), TENSOR_TO (the device is the
 * first argument after self, or keyword "device").
 *
 * Two types share this code: Forwarder, for functions of a module (no
 * binding, as torch's builtins), and MethodForwarder, for methods of
 * torch.Tensor (binds like a Python function, and is a method descriptor so
 * that t.to(x) passes self in the argument array without a bound object).
 * Instances have a __dict__ (functools.update_wrapper fills __name__,
 * __qualname__, __doc__, __module__, __wrapped__), pickle by reference
 * through the ``reduce`` value given at construction, and take part in GC.
 * torch.compile puts forwarders into its graphs as the torch functions they
 * replace (ops/device/redirect.py, _dynamo_allows_forwarders).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <string.h>
#include <structmember.h>

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *
Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#endif

enum { RULE_FACTORY = 0, RULE_FACTORY_PIN = 1, RULE_TENSOR_TO = 2 };

typedef struct {
    PyObject_HEAD
    PyObject *original;
    PyObject *wrapper;
    PyObject *reduce;
    PyObject *cache;
    PyObject *fast;
    PyObject *dict;
    PyObject *weakreflist;
    PyTypeObject *dtype_type;
    int rule;
    vectorcallfunc vectorcall;
} Forwarder;

static PyObject *str_device;
static PyObject *str_pin_memory;

/* The position of keyword ``name`` in ``kwnames``, or -1. */
static Py_ssize_t
keyword_index(PyObject *kwnames, PyObject *name)
{
    if (kwnames == NULL) {
        return -1;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyTuple_GET_ITEM(kwnames, i) == name) {
            return i;
        }
    }
    /* Keyword names written in code are interned, and an interned name that is not
     * ``name`` itself differs from it; only names built at run time (``**{...}``)
     * are compared by value. */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_Check(item) && !PyUnicode_CHECK_INTERNED(item) && PyUnicode_Compare(item, name) == 0) {
            return i;
        }
    }
    return -1;
}

#define SMALL_CALL 12

#if PY_VERSION_HEX >= 0x030B0000
#define COUNTS_SITES 1
#else
#define COUNTS_SITES 0
#endif

/* With the report on: count a call that maps ``spec``, at its calling instruction, if the
 * report's fast table already knows that instruction for this spec. 1: counted; 0: not
 * answered here (the recording wrapper must run); -1: error. */
static int
count_site(Forwarder *fw, PyObject *spec)
{
#if COUNTS_SITES
    PyFrameObject *frame = PyEval_GetFrame();  /* the caller's: a C call pushes no frame */
    if (frame == NULL) {
        return 0;
    }
    PyObject *offset = PyLong_FromLong(PyFrame_GetLasti(frame));
    if (offset == NULL) {
        return -1;
    }
    PyObject *node = PyDict_GetItemWithError(fw->fast, offset);
    Py_DECREF(offset);
    if (node == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyTuple_CheckExact(node) || PyTuple_GET_SIZE(node) != 3 || PyTuple_GET_ITEM(node, 1) != spec) {
        return 0;
    }
    PyCodeObject *code = PyFrame_GetCode(frame);
    int same = (PyObject *)code == PyTuple_GET_ITEM(node, 0);
    Py_DECREF(code);
    if (!same) {
        return 0;
    }
    PyObject *counter = PyTuple_GET_ITEM(node, 2);
    iternextfunc next = Py_TYPE(counter)->tp_iternext;
    if (next == NULL) {
        return 0;
    }
    Py_INCREF(counter);  /* the table may change while the counter runs */
    PyObject *value = next(counter);
    Py_DECREF(counter);
    if (value == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    Py_DECREF(value);
    return 1;
#else
    (void)fw;
    (void)spec;
    return 0;
#endif
}

/* Call the original with args[index] replaced by the cached mapping of it: what the
 * Python wrapper does on a cache hit. A miss (or an unhashable value, or a call with
 * more arguments than SMALL_CALL) goes to the wrapper, which maps and fills the cache. */
static PyObject *
call_mapped(Forwarder *fw, PyObject *const *args, size_t nargsf, PyObject *kwnames, Py_ssize_t index)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    Py_ssize_t total = nargs + (kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames));
    if (fw->cache == NULL || total > SMALL_CALL) {
        return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
    }
    PyObject *mapped = PyDict_GetItemWithError(fw->cache, args[index]);
    if (mapped == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                return NULL;
            }
            PyErr_Clear();  /* unhashable: the wrapper decides */
        }
        return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
    }
    if (fw->fast != NULL && mapped != args[index]) {  /* a spec that was mapped: the report counts it */
        int counted = count_site(fw, args[index]);
        if (counted < 0) {
            return NULL;
        }
        if (counted == 0) {
            return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
        }
    }
    PyObject *stack[SMALL_CALL + 1];
    memcpy(stack + 1, args, total * sizeof(PyObject *));
    stack[1 + index] = mapped;
    Py_INCREF(mapped);  /* borrowed from the cache, which the call may change */
    PyObject *result = PyObject_Vectorcall(fw->original, stack + 1, nargs | PY_VECTORCALL_ARGUMENTS_OFFSET, kwnames);
    Py_DECREF(mapped);
    return result;
}

static PyObject *
forwarder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Forwarder *fw = (Forwarder *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (fw->original == NULL) {  /* cleared by the garbage collector while in a cycle */
        PyErr_SetString(PyExc_RuntimeError, "torchdevice forwarder called after it was cleared");
        return NULL;
    }
    Py_ssize_t device = keyword_index(kwnames, str_device);
    if (fw->rule == RULE_TENSOR_TO) {
        if (device >= 0) {
            if (nargs != 1) {  /* a device twice: the wrapper lets torch say so */
                return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
            }
            if (args[nargs + device] == Py_None) {
                return PyObject_Vectorcall(fw->original, args, nargsf, kwnames);
            }
            return call_mapped(fw, args, nargsf, kwnames, nargs + device);
        }
        if (nargs == 1 || (nargs >= 2 && Py_TYPE(args[1]) == fw->dtype_type)) {
            return PyObject_Vectorcall(fw->original, args, nargsf, kwnames);
        }
        if (nargs == 0) {
            return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
        }
        return call_mapped(fw, args, nargsf, kwnames, 1);
    }
    if (fw->rule == RULE_FACTORY_PIN && keyword_index(kwnames, str_pin_memory) >= 0) {
        return PyObject_Vectorcall(fw->wrapper, args, nargsf, kwnames);
    }
    if (device < 0 || args[nargs + device] == Py_None) {
        return PyObject_Vectorcall(fw->original, args, nargsf, kwnames);
    }
    return call_mapped(fw, args, nargsf, kwnames, nargs + device);
}

static PyObject *
forwarder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"original", "wrapper", "rule", "dtype", "reduce", "cache", "fast", NULL};
    PyObject *original, *wrapper, *dtype_type, *reduce = Py_None, *cache = Py_None, *fast = Py_None;
    int rule;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOiO|OOO:Forwarder", keywords,
                                     &original, &wrapper, &rule, &dtype_type, &reduce, &cache, &fast)) {
        return NULL;
    }
    if (cache != Py_None && !PyDict_CheckExact(cache)) {
        PyErr_SetString(PyExc_TypeError, "Forwarder: cache must be a dict or None");
        return NULL;
    }
    if (fast != Py_None && !PyDict_CheckExact(fast)) {
        PyErr_SetString(PyExc_TypeError, "Forwarder: fast must be a dict or None");
        return NULL;
    }
    if (fast != Py_None && !COUNTS_SITES) {
        PyErr_SetString(PyExc_ValueError, "Forwarder: this interpreter cannot count report sites in C (COUNTS_SITES is 0)");
        return NULL;
    }
    if (rule < RULE_FACTORY || rule > RULE_TENSOR_TO) {
        PyErr_Format(PyExc_ValueError, "Forwarder: unknown rule %d", rule);
        return NULL;
    }
    if (!PyCallable_Check(original) || !PyCallable_Check(wrapper)) {
        PyErr_SetString(PyExc_TypeError, "Forwarder: original and wrapper must be callable");
        return NULL;
    }
    if (!PyType_Check(dtype_type)) {
        PyErr_SetString(PyExc_TypeError, "Forwarder: dtype must be a type (torch.dtype)");
        return NULL;
    }
    Forwarder *fw = (Forwarder *)type->tp_alloc(type, 0);
    if (fw == NULL) {
        return NULL;
    }
    fw->original = Py_NewRef(original);
    fw->wrapper = Py_NewRef(wrapper);
    fw->dtype_type = (PyTypeObject *)Py_NewRef(dtype_type);
    fw->reduce = reduce == Py_None ? NULL : Py_NewRef(reduce);
    fw->cache = cache == Py_None ? NULL : Py_NewRef(cache);
    fw->fast = fast == Py_None ? NULL : Py_NewRef(fast);
    fw->rule = rule;
    fw->vectorcall = forwarder_vectorcall;
    return (PyObject *)fw;
}

static int
forwarder_traverse(Forwarder *fw, visitproc visit, void *arg)
{
    Py_VISIT(fw->original);
    Py_VISIT(fw->wrapper);
    Py_VISIT(fw->reduce);
    Py_VISIT(fw->cache);
    Py_VISIT(fw->fast);
    Py_VISIT(fw->dict);
    Py_VISIT(fw->dtype_type);
    return 0;
}

static int
forwarder_clear(Forwarder *fw)
{
    Py_CLEAR(fw->original);
    Py_CLEAR(fw->wrapper);
    Py_CLEAR(fw->reduce);
    Py_CLEAR(fw->cache);
    Py_CLEAR(fw->fast);
    Py_CLEAR(fw->dict);
    Py_CLEAR(fw->dtype_type);
    return 0;
}

static void
forwarder_dealloc(Forwarder *fw)
{
    PyObject_GC_UnTrack(fw);
    if (fw->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)fw);
    }
    forwarder_clear(fw);
    Py_TYPE(fw)->tp_free((PyObject *)fw);
}

static PyObject *
forwarder_call(PyObject *self, PyObject *args, PyObject *kwargs)
{
    /* Only reached through paths that bypass vectorcall (e.g. PyObject_Call
     * with a tuple): the vectorcall slot does the work. */
    return PyVectorcall_Call(self, args, kwargs);
}

static PyObject *
method_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return PyMethod_New(self, obj);
}

static PyObject *
forwarder_reduce(Forwarder *fw, PyObject *Py_UNUSED(ignored))
{
    if (fw->reduce == NULL) {
        PyErr_Format(PyExc_TypeError, "cannot pickle this torchdevice forwarder (no reference given)");
        return NULL;
    }
    return Py_NewRef(fw->reduce);
}

static PyObject *
forwarder_repr(Forwarder *fw)
{
    PyObject *name = NULL;
    if (fw->dict != NULL) {
        name = PyDict_GetItemString(fw->dict, "__qualname__");
    }
    if (name != NULL) {
        return PyUnicode_FromFormat("<torchdevice forwarder %S>", name);
    }
    return PyUnicode_FromFormat("<torchdevice forwarder of %R>", fw->original);
}

static PyMethodDef forwarder_methods[] = {
    {"__reduce__", (PyCFunction)forwarder_reduce, METH_NOARGS, "Pickle by reference to the patched name."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef forwarder_members[] = {
    {"_torchdevice_original", T_OBJECT, offsetof(Forwarder, original), READONLY,
     "the torch callable that calls needing no mapping go to"},
    {"_torchdevice_python", T_OBJECT, offsetof(Forwarder, wrapper), READONLY,
     "the Python wrapper that every other call goes to"},
    {"_torchdevice_rule", T_INT, offsetof(Forwarder, rule), READONLY, "0 factory, 1 factory with pin_memory, 2 Tensor.to"},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef forwarder_getset[] = {
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define FORWARDER_FIELDS \
    .tp_basicsize = sizeof(Forwarder), \
    .tp_dealloc = (destructor)forwarder_dealloc, \
    .tp_vectorcall_offset = offsetof(Forwarder, vectorcall), \
    .tp_repr = (reprfunc)forwarder_repr, \
    .tp_call = forwarder_call, \
    .tp_getattro = PyObject_GenericGetAttr, \
    .tp_setattro = PyObject_GenericSetAttr, \
    .tp_traverse = (traverseproc)forwarder_traverse, \
    .tp_clear = (inquiry)forwarder_clear, \
    .tp_weaklistoffset = offsetof(Forwarder, weakreflist), \
    .tp_methods = forwarder_methods, \
    .tp_members = forwarder_members, \
    .tp_getset = forwarder_getset, \
    .tp_dictoffset = offsetof(Forwarder, dict), \
    .tp_new = forwarder_new

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "torchdevice._speedups.Forwarder",
    .tp_doc = "Forwarder(original, wrapper, rule, dtype, reduce=None, cache=None, fast=None): calls needing no device "
              "mapping go to original, others to wrapper.",
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    FORWARDER_FIELDS,
};

static PyTypeObject MethodForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "torchdevice._speedups.MethodForwarder",
    .tp_doc = "A Forwarder that binds as a method (for torch.Tensor methods).",
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL
                | Py_TPFLAGS_METHOD_DESCRIPTOR,
    .tp_descr_get = method_descr_get,
    FORWARDER_FIELDS,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "torchdevice._speedups",
    .m_doc = "The optional C fast path of torchdevice's device area (see _speedups.c).",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    str_device = PyUnicode_InternFromString("device");
    str_pin_memory = PyUnicode_InternFromString("pin_memory");
    if (str_device == NULL || str_pin_memory == NULL) {
        return NULL;
    }
    if (PyType_Ready(&ForwarderType) < 0 || PyType_Ready(&MethodForwarderType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&ForwarderType);
    if (PyModule_AddObject(m, "Forwarder", (PyObject *)&ForwarderType) < 0) {
        Py_DECREF(&ForwarderType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&MethodForwarderType);
    if (PyModule_AddObject(m, "MethodForwarder", (PyObject *)&MethodForwarderType) < 0) {
        Py_DECREF(&MethodForwarderType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "FACTORY", RULE_FACTORY) < 0
        || PyModule_AddIntConstant(m, "FACTORY_PIN", RULE_FACTORY_PIN) < 0
        || PyModule_AddIntConstant(m, "TENSOR_TO", RULE_TENSOR_TO) < 0
        || PyModule_AddIntConstant(m, "COUNTS_SITES", COUNTS_SITES) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
