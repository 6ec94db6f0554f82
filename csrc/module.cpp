// Python module entry point of adaptir_kernels._C. Importing the shared library runs
// the static TORCH_LIBRARY registrations of ops.cpp and csrc/cpu/*.cpp, after which the
// ops are reachable as torch.ops.adaptir_cpp.*. The module itself has one function,
// cpu_isa(). Plain CPython API instead of pybind11 keeps the build light.
#include <Python.h>

#include "cpu/isa.h"

namespace {

PyObject* cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(adaptir::cpu::cpu_isa_name());
}

PyMethodDef methods[] = {
    {"cpu_isa", cpu_isa, METH_NOARGS,
     "Instruction set of the CPU vector kernels: 'avx512' (the skinny products in "
     "AVX-512, the other vector kernels in AVX2+FMA), 'avx2' (all in AVX2+FMA: the CPU "
     "lacks AVX-512F/VL, or is an AMD family 19h (Zen 4) one and ADAPTIR_CPU_AVX512=1 "
     "was not set, or ADAPTIR_CPU_AVX512=0 was set) or 'baseline' (the CPU lacks "
     "AVX2/FMA, or ADAPTIR_CPU_AVX2=0 was set)."},
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
