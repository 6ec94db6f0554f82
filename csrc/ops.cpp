// Every C++ operator schema of the project, in one place. Kernels live in
// csrc/cpu/<op>.cpp, each with its own TORCH_LIBRARY_IMPL(adaptir_cpp, CPU, m).
// The fused operators take exactly the positional arguments of the torch composites
// in adaptir_kernels/ops/<op>.py (without the trailing backend name).
#include <torch/library.h>

#include "cpu/common.h"

TORCH_LIBRARY(adaptir_cpp, m) {
  // Spectral (amplitude/phase) gate, SPEC 4 step 2. U: (N, h, H, Wf, 2) real view.
  m.def("spectral_gate(Tensor U, Tensor amp_w, Tensor amp_b, Tensor pha_w, Tensor pha_b) "
        "-> Tensor");
  m.def("spectral_gate_backward(Tensor grad_G, Tensor U, Tensor amp_w, Tensor amp_b, "
        "Tensor pha_w, Tensor pha_b) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // SPEC 5 step 1: x (backbone layout) -> (u, xhat, mean, var).
  m.def("project_in(Tensor x, Tensor weight, Tensor bias, Tensor bn_weight, Tensor bn_bias, "
        "Tensor running_mean, Tensor running_var, bool training, float eps, str layout, "
        "int H, int W) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("project_in_backward(Tensor grad_u, Tensor x, Tensor xhat, Tensor weight, "
        "Tensor bn_weight, Tensor var, bool training, float eps, str layout, int H, int W) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // SPEC 5 step 2: u -> (l, sg).
  m.def("local_branch(Tensor u, Tensor conv_A, Tensor conv_B, Tensor conv_bias, "
        "Tensor si_weight, Tensor si_bias) -> (Tensor, Tensor)");
  m.def("local_branch_backward(Tensor grad_l, Tensor grad_sg, Tensor u, Tensor conv_A, "
        "Tensor conv_B, Tensor conv_bias, Tensor si_weight, Tensor si_bias) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // SPEC 5 step 3: u -> (g, gmean), with the signs of the inverse transform bit-packed.
  m.def("global_branch(Tensor u, Tensor amp_w, Tensor amp_b, Tensor pha_w, Tensor pha_b) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("global_branch_backward(Tensor grad_g, Tensor grad_gmean, Tensor u, Tensor g, "
        "Tensor sign, Tensor amp_w, Tensor amp_b, Tensor pha_w, Tensor pha_b) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");

  // SPEC 5 step 4: (u, gmean) -> (cs, cg), per-sample vectors.
  m.def("router(Tensor u, Tensor compress_w, Tensor compress_b, Tensor proj0_w, Tensor proj0_b, "
        "Tensor proj2_w, Tensor proj2_b, Tensor gmean, Tensor ci1_w, Tensor ci1_b, Tensor ci3_w, "
        "Tensor ci3_b) -> (Tensor, Tensor)");
  m.def("router_backward(Tensor grad_cs, Tensor grad_cg, Tensor u, Tensor compress_w, "
        "Tensor compress_b, Tensor proj0_w, Tensor proj0_b, Tensor proj2_w, Tensor proj2_b, "
        "Tensor gmean, Tensor ci1_w, Tensor ci1_b, Tensor ci3_w, Tensor ci3_b) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, "
        "Tensor, Tensor)");

  // SPEC 5 step 5: (l, g, sg, cg, cs, tail_w) -> out in the backbone layout.
  m.def("combine_out(Tensor l, Tensor g, Tensor sg, Tensor cg, Tensor cs, Tensor tail_w, "
        "str layout, ScalarType out_dtype) -> Tensor");
  m.def("combine_out_backward(Tensor grad_out, Tensor l, Tensor g, Tensor sg, Tensor cg, "
        "Tensor cs, Tensor tail_w, str layout) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");

  // The whole adapter (steps 1-5) as one autograd node: x and the 24 parameters, in the
  // order and shapes of adaptir_kernels.module._PARAMETERS -> (out, mean, var).
  m.def("adaptir_chain(Tensor x, Tensor running_mean, Tensor running_var, Tensor[] params, "
        "bool training, float eps, str layout, int H, int W) -> (Tensor, Tensor, Tensor)");
  // Its two halves, which its autograd node calls: the forward with what the backward
  // keeps, and the backward -> [grad_x, the 24 parameter gradients].
  m.def("adaptir_chain_forward(Tensor x, Tensor running_mean, Tensor running_var, "
        "Tensor[] params, bool training, float eps, str layout, int H, int W) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("adaptir_chain_backward(Tensor grad_out, Tensor x, Tensor xhat, Tensor g, Tensor sign, "
        "Tensor gmean, Tensor cs, Tensor cg, Tensor var, Tensor[] params, bool training, "
        "float eps, str layout, int H, int W) -> Tensor[]");
  // BatchNorm2d's running-statistics update from a training batch's mean and biased var.
  m.def("bn_running_update_(Tensor(a!) running_mean, Tensor(b!) running_var, "
        "Tensor(c!) num_batches_tracked, Tensor mean, Tensor var, float? momentum, int count) "
        "-> ()");

  // Tests: NaN-fill every output the kernels allocate (adaptir_kernels._alloc.poisoned).
  m.def("set_poison(bool on) -> ()", &adaptir::cpu::set_poison);
}
