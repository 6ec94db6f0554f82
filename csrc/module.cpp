// Python module entry point of adaptir_kernels._C. Importing the shared library runs
// the static TORCH_LIBRARY registrations of ops.cpp and csrc/cpu/*.cpp, after which the
// ops are reachable as torch.ops.adaptir_cpp.*. The module itself has one function,
// cpu_isa(). Plain CPython API instead of pybind11 keeps the build light.
#include <Python.h>

#include "cpu/isa.h"

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(adaptir::cpu::cpu_has_avx2_fma() ? "avx2" : "baseline");
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "Instruction set of the CPU kernels that have two builds: 'avx2' (AVX2+FMA) or "
     "'baseline' (the CPU lacks them, or ADAPTIR_CPU_AVX2=0 was set)."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "Registers the adaptir_cpp torch operators (torch.ops.adaptir_cpp).",
      -1,
      methods,
  };
  return PyModule_Create(&module_def);
}
}
