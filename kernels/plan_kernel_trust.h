// Whether kernel code stored in a plan may run as stored.
//
// A CUDA plan carries, besides the program of each fused pointwise chain, the cubin Kiln compiled
// from it (kernels/cuda/fused_pointwise.cpp), so that loading the plan needs no NVRTC. The cubin's
// key is a hash of the generated source, which anyone can compute: a crafted plan can carry any
// device code under a valid key. Trusted (the default), a kernel factory loads the stored code;
// untrusted, it ignores it and generates the kernel again from the layer's validated attributes,
// so only code Kiln generated itself runs (docs/security.md).
//
// The switch is per thread over a process default: engines are created on the thread that asks
// for them (Engine::create, TorchEngine deserialization inside torch.jit.load /
// torch.export.load), so a scope around a load covers exactly the engines that load creates.
// KILN_TRUST_PLAN_KERNELS=0 in the environment (read once, at the first query) makes the process
// default untrusted, for C++ apps that load files they did not write.
#pragma once

namespace kiln {

// The calling thread's setting: its innermost ScopedPlanKernelTrust, else the process default.
bool trust_plan_kernels();

// Sets the calling thread's setting for the scope and restores the previous one after. Nests;
// create and destroy it on the same thread.
class ScopedPlanKernelTrust {
 public:
  explicit ScopedPlanKernelTrust(bool trusted);
  ~ScopedPlanKernelTrust();
  ScopedPlanKernelTrust(const ScopedPlanKernelTrust&) = delete;
  ScopedPlanKernelTrust& operator=(const ScopedPlanKernelTrust&) = delete;

 private:
  int previous_;  // the thread's override before this scope: -1 none, 0 untrusted, 1 trusted
};

}  // namespace kiln
