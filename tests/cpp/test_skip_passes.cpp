// KILN_SKIP_PASSES (core/builder.cpp, docs/tools.md): the builder leaves the named passes out, and
// only those.
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/builder.h"
#include "test_util.h"

namespace kiln {
namespace {

// x -> convolution -> relu: fuse_conv_epilogue folds the relu into the convolution.
Network conv_relu() {
  Network net;
  const TensorId x = net.add_input("x", DataType::kFloat32, {1, 2, 4, 4});
  const TensorId w = test::float_constant(net, "w", {3, 2, 1, 1}, test::random_floats(6, 1));
  const TensorId c = net.add_layer("convolution", {x, w}, Attributes(), "conv").outputs[0];
  net.mark_output(net.add_activation(c, "relu", 0, "relu").outputs[0], "y");
  return net;
}

bool relu_fused(const std::string& skip) {
  if (skip.empty()) {
    unsetenv("KILN_SKIP_PASSES");
  } else {
    setenv("KILN_SKIP_PASSES", skip.c_str(), 1);
  }
  BuilderConfig config;
  config.target = BuildTarget::kReference;
  const Plan plan = Builder().build(conv_relu(), config);
  unsetenv("KILN_SKIP_PASSES");
  return test::layer_named(plan.network, "conv").attrs.has("activation");
}

TEST(SkipPasses, TheNamedPassesAndOnlyThoseAreLeftOut) {
  EXPECT_TRUE(relu_fused(""));
  EXPECT_FALSE(relu_fused("fuse_conv_epilogue"));
  EXPECT_FALSE(relu_fused("fold_batch_norm,fuse_conv_epilogue"));
  EXPECT_TRUE(relu_fused("fuse_conv_epilogue_not"));  // whole names only
  EXPECT_TRUE(relu_fused("fold_batch_norm"));
}

}  // namespace
}  // namespace kiln
