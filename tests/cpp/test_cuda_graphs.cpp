// CUDA graphs in ExecutionContext: replays give the same bytes as plain launches across shape
// changes, address changes (in-place update), staged bindings, the legacy default stream and a
// caller that captures itself; the allocator hook; KILN_CUDA_GRAPHS=0. GPU only, except the
// reference-backend checks at the end.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <mutex>

#include "ir/op_schema.h"
#include "test_util.h"

namespace kiln {
namespace {

// x [-1, 48] -> fully_connected -> gelu -> + x2 (row broadcast) -> matmul(w2) -> y [-1, 40];
// a mix of cuBLASLt and own kernels.
struct GraphNet {
  int64_t k = 48, h = 72, n = 40;
  std::vector<float> w1 = test::random_floats(h * k, 21), b1 = test::random_floats(h, 22),
                     s = test::random_floats(h, 23), w2 = test::random_floats(h * n, 24);
  Network network() const {
    Network net;
    TensorId x = net.add_input("x", DataType::kFloat32, {-1, k});
    TensorId tw = net.add_constant("w1", DataType::kFloat32, {h, k}, w1.data(), w1.size() * 4);
    TensorId tb = net.add_constant("b1", DataType::kFloat32, {h}, b1.data(), b1.size() * 4);
    TensorId ts = net.add_constant("s", DataType::kFloat32, {h}, s.data(), s.size() * 4);
    TensorId tw2 = net.add_constant("w2", DataType::kFloat32, {h, n}, w2.data(), w2.size() * 4);
    TensorId y = net.add_layer("fully_connected", {x, tw, tb}, {}, "fc").outputs[0];
    y = net.add_activation(y, "gelu", 0.0, "gelu").outputs[0];
    y = net.add_elementwise(y, ts, "add", "shift").outputs[0];
    y = net.add_matmul(y, tw2, false, false, "proj").outputs[0];
    net.mark_output(y, "y");
    return net;
  }
  std::shared_ptr<Engine> engine(std::shared_ptr<DeviceAllocator> allocator = nullptr) const {
    BuilderConfig c;
    c.target = BuildTarget::kCuda;
    c.profiles.push_back({{{"x", {{1, k}, {16, k}, {64, k}}}}});
    return Engine::create(Builder().build(network(), c), Backend::kCuda, std::move(allocator));
  }
};

struct DeviceVec {
  void* p;
  size_t bytes;
  explicit DeviceVec(size_t n) : p(device_alloc(n * 4)), bytes(n * 4) {}
  ~DeviceVec() { device_free(p); }
};

// Runs `ctx` on x (m rows) into fresh or given device buffers and returns y on the host.
std::vector<float> run(ExecutionContext& ctx, const std::vector<float>& x, int64_t m, void* dx, void* dy,
                       cudaStream_t stream) {
  ctx.set_input_shape("x", {m, 48});
  cudaMemcpyAsync(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice, stream);
  cudaMemsetAsync(dy, 0xff, static_cast<size_t>(m) * 40 * 4, stream);  // NaNs: stale output shows
  ctx.set_tensor_address("x", dx);
  ctx.set_tensor_address("y", dy);
  ctx.enqueue(stream);
  std::vector<float> y(static_cast<size_t>(m) * 40);
  cudaMemcpyAsync(y.data(), dy, y.size() * 4, cudaMemcpyDeviceToHost, stream);
  EXPECT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  return y;
}

void expect_same_bytes(const std::vector<float>& a, const std::vector<float>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  // Replays run the very kernels of the plain launches on the same data: bit-identical.
  ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size() * 4), 0) << what;
}

void check_replays(cudaStream_t stream, bool staging) {
  GraphNet g;
  auto engine = g.engine();
  auto plain = engine->create_execution_context();
  plain->set_cuda_graphs(false);
  auto graphs = engine->create_execution_context();
  ASSERT_TRUE(graphs->cuda_graphs());
  graphs->set_binding_staging(staging);
  DeviceVec x_a(64 * 48), x_b(64 * 48), y_a(64 * 40), y_b(64 * 40), y_ref(64 * 40), x_ref(64 * 48);
  // Shapes and addresses vary: repeats, a shape change and back, an address change.
  struct Step {
    int64_t m;
    bool other_buffers;
  };
  const std::vector<Step> steps = {{8, false}, {8, false}, {8, false}, {3, false}, {3, false},
                                   {3, false}, {8, false}, {8, true},  {8, true},  {8, false},
                                   {64, true}, {64, true}, {64, true}, {1, false}, {1, false}};
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& s = steps[i];
    auto x = test::random_floats(static_cast<size_t>(s.m * 48), 500 + static_cast<uint32_t>(i));
    auto want = run(*plain, x, s.m, x_ref.p, y_ref.p, stream);
    auto got = run(*graphs, x, s.m, s.other_buffers ? x_b.p : x_a.p, s.other_buffers ? y_b.p : y_a.p, stream);
    expect_same_bytes(got, want, "step " + std::to_string(i) + " m=" + std::to_string(s.m));
  }
  const auto& st = graphs->graph_stats();
  EXPECT_EQ(plain->graph_stats().replays, 0);
  // 4 shape sets, each warmed up once with a plain run.
  EXPECT_EQ(st.plain, 4);
  EXPECT_EQ(st.replays, static_cast<int64_t>(steps.size()) - 4);
  if (staging) {
    EXPECT_EQ(st.captures, 4) << "staged bindings: one capture per shape set";
    EXPECT_EQ(st.updates, 0);
  } else {
    // Captures: the second run of each of the 4 shape sets, and the address changes at steps 7
    // and 9 (m=8 moves to the other buffers and back), which update the graph in place.
    EXPECT_EQ(st.captures, 6);
    EXPECT_EQ(st.instantiations + st.updates, st.captures);
    EXPECT_GE(st.updates, 1) << "an address change updates the instantiated graph in place";
  }
}

TEST(CudaGraphs, ReplaysMatchPlainLaunchesOnAStream) {
  KILN_REQUIRE_GPU();
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  check_replays(stream, false);
  cudaStreamDestroy(stream);
}

TEST(CudaGraphs, ReplaysMatchOnTheLegacyDefaultStream) {
  KILN_REQUIRE_GPU();
  check_replays(nullptr, false);
}

TEST(CudaGraphs, StagedBindingsNeverRecapture) {
  KILN_REQUIRE_GPU();
  check_replays(nullptr, true);
}

TEST(CudaGraphs, CallerCaptureRecordsPlainLaunches) {
  KILN_REQUIRE_GPU();
  GraphNet g;
  auto engine = g.engine();
  auto ctx = engine->create_execution_context();
  auto ref = engine->create_execution_context();
  ref->set_cuda_graphs(false);
  cudaStream_t stream;
  ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  DeviceVec dx(16 * 48), dy(16 * 40), ry(16 * 40);
  auto x = test::random_floats(16 * 48, 77);
  auto want = run(*ref, x, 16, dx.p, ry.p, stream);
  // Warm up (cuBLASLt heuristics, module loading) outside the caller's capture, as torch does.
  run(*ctx, x, 16, dx.p, dy.p, stream);
  cudaMemsetAsync(dy.p, 0xff, dy.bytes, stream);
  cudaStreamSynchronize(stream);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  const int64_t plain_before = ctx->graph_stats().plain;
  ctx->enqueue(stream);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_EQ(ctx->graph_stats().plain, plain_before + 1) << "inside a caller's capture: plain launches";
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  std::vector<float> got(16 * 40);
  cudaMemcpyAsync(got.data(), dy.p, dy.bytes, cudaMemcpyDeviceToHost, stream);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  expect_same_bytes(got, want, "caller's graph");
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
}

TEST(CudaGraphs, EnvironmentSwitchTurnsThemOff) {
  KILN_REQUIRE_GPU();
  GraphNet g;
  auto engine = g.engine();
  setenv("KILN_CUDA_GRAPHS", "0", 1);
  auto off = engine->create_execution_context();
  unsetenv("KILN_CUDA_GRAPHS");
  auto on = engine->create_execution_context();
  EXPECT_FALSE(off->cuda_graphs());
  EXPECT_TRUE(on->cuda_graphs());
  DeviceVec dx(8 * 48), dy(8 * 40);
  auto x = test::random_floats(8 * 48, 5);
  for (int i = 0; i < 3; ++i) run(*off, x, 8, dx.p, dy.p, nullptr);
  EXPECT_EQ(off->graph_stats().plain, 3);
  EXPECT_EQ(off->graph_stats().replays, 0);
}

// Counts what goes through it; memory from cudaMalloc underneath.
class CountingAllocator final : public DeviceAllocator {
 public:
  void* allocate(size_t bytes) override {
    void* p = default_device_allocator()->allocate(bytes);
    if (p) ++live;
    bytes_total += bytes;
    return p;
  }
  void deallocate(void* p) noexcept override {
    if (p) --live;
    default_device_allocator()->deallocate(p);
  }
  std::atomic<int> live{0};
  std::atomic<size_t> bytes_total{0};
};

TEST(CudaGraphs, AllocatorHookHoldsWeightsArenaWorkspaceAndStaging) {
  KILN_REQUIRE_GPU();
  GraphNet g;
  auto alloc = std::make_shared<CountingAllocator>();
  {
    auto engine = g.engine(alloc);
    EXPECT_EQ(alloc->live, 1) << "all weights in one allocation";
    const size_t weights = alloc->bytes_total;
    EXPECT_GE(weights, (g.w1.size() + g.b1.size() + g.s.size() + g.w2.size()) * 4);
    {
      auto ctx = engine->create_execution_context();
      EXPECT_EQ(alloc->live, 1) << "a context allocates for the shapes of its first enqueue, not before";
      ctx->set_binding_staging(true);
      DeviceVec dx(8 * 48), dy(8 * 40);
      auto x = test::random_floats(8 * 48, 6);
      run(*ctx, x, 8, dx.p, dy.p, nullptr);
      run(*ctx, x, 8, dx.p, dy.p, nullptr);
      EXPECT_EQ(alloc->live, 5) << "arena, workspace and one staging buffer per binding";
    }
    EXPECT_EQ(alloc->live, 1);
    // A context may use its own allocator; kProfileMax allocates arena and workspace at once.
    auto other = std::make_shared<CountingAllocator>();
    {
      auto ctx = engine->create_execution_context(other, MemoryAllocation::kProfileMax);
      EXPECT_EQ(other->live, 2);
    }
    EXPECT_EQ(other->live, 0);
  }
  EXPECT_EQ(alloc->live, 0);
}

// "test_sync_copy": y = x by cudaMemcpyAsync, then a cudaStreamSynchronize (illegal during
// capture); with attribute "declared" = 1 its kernel says so through capturable().
class SyncCopy final : public Kernel {
 public:
  explicit SyncCopy(const Layer& l) : declared_(l.attrs.get_int("declared", int64_t{0}) != 0) {}
  void run(const std::vector<TensorView>& in, const std::vector<TensorView>& out,
           const LaunchContext& ctx) const override {
    auto stream = static_cast<cudaStream_t>(ctx.stream);
    size_t bytes = static_cast<size_t>(volume(in[0].dims)) * dtype_size(in[0].dtype);
    cudaError_t e = cudaMemcpyAsync(out[0].data, in[0].data, bytes, cudaMemcpyDeviceToDevice, stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
    KILN_CHECK(e == cudaSuccess, "test_sync_copy: " << cudaGetErrorString(e));
  }
  std::string name() const override { return "test_sync_copy"; }
  bool capturable() const override { return !declared_; }

 private:
  bool declared_;
};

std::shared_ptr<Engine> sync_copy_engine(bool declared) {
  static std::once_flag once;
  std::call_once(once, [] {
    register_schema(
        {"test_sync_copy",
         1,
         1,
         [](const Layer&, const std::vector<TensorDesc>& in) {
           return std::vector<TensorDesc>{{in[0].dtype, in[0].dims}};
         },
         {{"declared", AttrType::kInt, AttrValue{int64_t{0}}, "1: the kernel says it is not capturable"}}});
    register_kernel("test_sync_copy", Backend::kCuda,
                    [](const Layer& l) { return std::make_unique<SyncCopy>(l); });
  });
  Network net;
  TensorId x = net.add_input("x", DataType::kFloat32, {-1, 48});
  Attributes a;
  a.set("declared", int64_t{declared});
  TensorId h = net.add_layer("test_sync_copy", {x}, a, "sync").outputs[0];
  TensorId y = net.add_activation(h, "relu", 0.0, "relu").outputs[0];
  net.mark_output(y, "y");
  BuilderConfig c;
  c.target = BuildTarget::kCuda;
  c.profiles.push_back({{{"x", {{1, 48}, {8, 48}, {64, 48}}}}});
  return Engine::create(Builder().build(net, c), Backend::kCuda);
}

std::vector<float> relu(std::vector<float> v) {
  for (float& x : v) x = std::max(x, 0.f);
  return v;
}

TEST(CudaGraphs, FailedCaptureFallsBackToPlainLaunches) {
  KILN_REQUIRE_GPU();
  auto engine = sync_copy_engine(false);
  auto ctx = engine->create_execution_context();
  ASSERT_TRUE(ctx->cuda_graphs());
  DeviceVec dx(8 * 48), dy(8 * 48);
  for (int i = 0; i < 4; ++i) {
    auto x = test::random_floats(8 * 48, 40 + static_cast<uint32_t>(i));
    ctx->set_input_shape("x", {8, 48});
    cudaMemcpy(dx.p, x.data(), x.size() * 4, cudaMemcpyHostToDevice);
    ctx->set_tensor_address("x", dx.p);
    ctx->set_tensor_address("y", dy.p);
    ctx->enqueue(nullptr);
    std::vector<float> y(8 * 48);
    ASSERT_EQ(cudaMemcpy(y.data(), dy.p, y.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    ASSERT_EQ(y, relu(x)) << "run " << i;
  }
  // Warm-up, one failed capture (then a plain run), two plain runs: no replay, no error.
  EXPECT_EQ(ctx->graph_stats().replays, 0);
  EXPECT_EQ(ctx->graph_stats().captures, 0);
  EXPECT_EQ(ctx->graph_stats().plain, 4);
}

TEST(CudaGraphs, KernelThatIsNotCapturableTurnsGraphsOff) {
  KILN_REQUIRE_GPU();
  auto engine = sync_copy_engine(true);
  auto ctx = engine->create_execution_context();
  EXPECT_FALSE(ctx->cuda_graphs());
  ctx->set_cuda_graphs(true);
  EXPECT_FALSE(ctx->cuda_graphs());
}

// Reference backend: graphs never apply; the enqueue path is the same table.
TEST(CudaGraphs, ReferenceContextsIgnoreTheSwitch) {
  GraphNet g;
  BuilderConfig c;
  c.target = BuildTarget::kReference;
  c.profiles.push_back({{{"x", {{1, g.k}, {16, g.k}, {64, g.k}}}}});
  auto engine = Engine::create(Builder().build(g.network(), c), Backend::kReference);
  auto ctx = engine->create_execution_context();
  EXPECT_FALSE(ctx->cuda_graphs());
  ctx->set_cuda_graphs(true);
  EXPECT_FALSE(ctx->cuda_graphs());
  std::vector<float> y1(8 * g.n), y2(8 * g.n), y3(3 * g.n);
  auto x = test::random_floats(8 * g.k, 8);
  ctx->set_input_shape("x", {8, g.k});
  ctx->set_tensor_address("x", x.data());
  ctx->set_tensor_address("y", y1.data());
  ctx->enqueue(nullptr);
  ctx->set_tensor_address(1, y2.data());  // by binding index: inputs first, then outputs
  ctx->enqueue(nullptr);
  EXPECT_EQ(y1, y2);
  ctx->set_input_shape(0, {3, g.k});
  EXPECT_EQ(ctx->tensor_shape(1), (Dims{3, g.n}));
  ctx->set_tensor_address(1, y3.data());
  ctx->enqueue(nullptr);
  for (size_t i = 0; i < y3.size(); ++i) EXPECT_EQ(y3[i], y1[i]) << "rows are independent";
  EXPECT_EQ(ctx->graph_stats().plain, 3);
  EXPECT_THROW(ctx->set_tensor_address(2, nullptr), Error);
  EXPECT_THROW(ctx->set_input_shape(1, {3, g.n}), Error);  // binding 1 is an output
}

}  // namespace
}  // namespace kiln
