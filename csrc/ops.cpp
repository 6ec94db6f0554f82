// Every C++ operator schema of the project, in one place. Kernels live in
// csrc/cpu/<op>.cpp, each with its own TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m).
#include <torch/library.h>

TORCH_LIBRARY(adaptir_cpp, m) {
  // Spectral (amplitude/phase) gate, SPEC 4 step 2. U: (N, h, H, Wf, 2) real view.
  m.def("spectral_gate(Tensor U, Tensor amp_w, Tensor amp_b, Tensor pha_w, Tensor pha_b) "
        "-> Tensor");
  m.def("spectral_gate_backward(Tensor grad_G, Tensor U, Tensor amp_w, Tensor amp_b, "
        "Tensor pha_w, Tensor pha_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}
