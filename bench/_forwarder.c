/* The cheapest wrapper CPython allows, for the benchmark's "floor" group
 * (docs/performance.md, "Where a target is not met").
 *
 * Forwarder(original, with_device) is a callable object with a vectorcall
 * slot: a call whose keyword names include "device" goes to with_device, any
 * other call goes to original, with the caller's argument array passed on
 * untouched (no tuple or dict is built here). This is what a C-level
 * torchdevice factory wrapper would have to do at the least; the benchmark
 * compiles it at run time to measure that least against a native call.
 * torchdevice itself does not use it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>

typedef struct {
    PyObject_HEAD
    PyObject *original;
    PyObject *with_device;
    vectorcallfunc vectorcall;
} Forwarder;

static PyObject *device_name;

static PyObject *
forwarder_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Forwarder *fw = (Forwarder *)self;
    if (kwnames != NULL) {
        Py_ssize_t n = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            if (name == device_name || PyUnicode_Compare(name, device_name) == 0) {
                return PyObject_Vectorcall(fw->with_device, args, nargsf, kwnames);
            }
        }
    }
    return PyObject_Vectorcall(fw->original, args, nargsf, kwnames);
}

static PyObject *
forwarder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    PyObject *original, *with_device;
    if (!PyArg_ParseTuple(args, "OO:Forwarder", &original, &with_device)) {
        return NULL;
    }
    Forwarder *fw = (Forwarder *)type->tp_alloc(type, 0);
    if (fw == NULL) {
        return NULL;
    }
    Py_INCREF(original);
    Py_INCREF(with_device);
    fw->original = original;
    fw->with_device = with_device;
    fw->vectorcall = forwarder_vectorcall;
    return (PyObject *)fw;
}

static void
forwarder_dealloc(Forwarder *fw)
{
    Py_XDECREF(fw->original);
    Py_XDECREF(fw->with_device);
    Py_TYPE(fw)->tp_free((PyObject *)fw);
}

static PyTypeObject ForwarderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "_forwarder.Forwarder",
    .tp_basicsize = sizeof(Forwarder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = forwarder_new,
    .tp_dealloc = (destructor)forwarder_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Forwarder, vectorcall),
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_forwarder", NULL, -1, NULL};

PyMODINIT_FUNC
PyInit__forwarder(void)
{
    device_name = PyUnicode_InternFromString("device");
    if (device_name == NULL || PyType_Ready(&ForwarderType) < 0) {
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
    return m;
}
