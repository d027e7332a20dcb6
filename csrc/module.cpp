// The Python module fastguide._C. Importing it loads the library, which registers the ops
// (TORCH_LIBRARY needs no pybind11); the module itself only carries build facts.
#include <Python.h>

#ifndef FASTGUIDE_WITH_CUDA
#define FASTGUIDE_WITH_CUDA 0
#endif

static struct PyModuleDef fastguide_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "fastguide compiled kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fastguide_module);
  if (m == nullptr) return nullptr;
  if (PyModule_AddStringConstant(m, "TORCH_VERSION", FASTGUIDE_TORCH_VERSION) < 0 ||
      PyModule_AddIntConstant(m, "WITH_CUDA", FASTGUIDE_WITH_CUDA) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", FASTGUIDE_CUDA_ARCHS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
