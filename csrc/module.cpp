// Python module entry point of adaptir_kernels._C. It exposes no functions: importing
// the shared library runs the static TORCH_LIBRARY registrations of ops.cpp and
// csrc/cpu/*.cpp, after which the ops are reachable as torch.ops.adaptir_cpp.*.
// Plain CPython API instead of pybind11 keeps the build light.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "Registers the adaptir_cpp torch operators (torch.ops.adaptir_cpp).",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
}
