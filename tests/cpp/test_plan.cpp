// Plan format: round trip, version/architecture checks, and a fuzz of mutated bytes in which
// every case must end in a clean kiln::Error or a plan that still runs correctly.
#include <algorithm>
#include <cstring>
#include <random>

#include "test_util.h"

namespace kiln {
namespace {

Network small_network() {
  Network net;
  auto w = test::random_floats(6 * 4, 7);
  auto b = test::random_floats(4, 8);
  TensorId x = net.add_input("x", DataType::kFloat32, {-1, 6});
  TensorId tw = net.add_constant("w", DataType::kFloat32, {6, 4}, w.data(), w.size() * 4);
  TensorId tb = net.add_constant("b", DataType::kFloat32, {4}, b.data(), b.size() * 4);
  TensorId y = net.add_matmul(x, tw).outputs[0];
  y = net.add_elementwise(y, tb, "add").outputs[0];
  y = net.add_activation(y, "leaky_relu", 0.1).outputs[0];
  net.mark_output(y, "y");
  return net;
}

BuilderConfig reference_config() {
  BuilderConfig c;
  c.target = BuildTarget::kReference;
  c.profiles.push_back({{{"x", {{1, 6}, {2, 6}, {3, 6}}}}});
  return c;
}

TEST(Plan, RoundTripIsBitIdentical) {
  Plan plan = Builder().build(small_network(), reference_config());
  std::vector<uint8_t> bytes = plan.serialize();
  Plan again = Plan::deserialize(bytes);
  EXPECT_EQ(again.serialize(), bytes);
  auto x = test::random_floats(3 * 6, 9);
  auto a = test::run_float(Engine::create(plan, Backend::kReference), {{"x", {{3, 6}, x}}});
  auto b = test::run_float(Engine::create(again, Backend::kReference), {{"x", {{3, 6}, x}}});
  EXPECT_EQ(a, b);
}

TEST(Plan, RejectsWrongMagicVersionAndTruncation) {
  std::vector<uint8_t> bytes = Builder().build(small_network(), reference_config()).serialize();
  auto expect_error = [](std::vector<uint8_t> b, const std::string& needle) {
    try {
      Plan::deserialize(b);
      FAIL() << "accepted a bad plan; expected an error containing '" << needle << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  auto bad = bytes;
  bad[0] = 'X';
  expect_error(bad, "bad magic");
  bad = bytes;
  bad[8] = 99;  // format version
  expect_error(bad, "format version 99");
  expect_error(std::vector<uint8_t>(bytes.begin(), bytes.begin() + bytes.size() / 2), "truncated");
  expect_error({}, "bad magic");
  bad = bytes;
  bad[bytes.size() - 3] ^= 0x40;
  expect_error(bad, "checksum");
  bad = bytes;
  bad[8] = 2;  // older than the oldest format read
  expect_error(bad, "format version 2");
  // Since format 3 the checksum covers the header. Each version field and the architecture (bytes
  // 12..35: Kiln, CUDA, cuBLASLt, cuDNN, sm_arch) changed alone is caught.
  for (size_t at : {12, 16, 20, 24, 28}) {
    bad = bytes;
    bad[at] ^= 0x01;
    expect_error(bad, "checksum");
  }
}

// A plan that claims another Kiln version in its (checksummed) header: another major is always
// refused, another minor only without allow_minor_version_mismatch, another patch is fine.
TEST(Plan, RefusesOtherKilnVersionByName) {
  Plan plan = Builder().build(small_network(), reference_config());
  const uint32_t here = plan.header.kiln_version;
  ASSERT_EQ(here, kiln_version_number());
  auto create = [&](uint32_t version, bool allow) {
    Plan p = plan;
    p.header.kiln_version = version;
    return Engine::create(Plan::deserialize(p.serialize()), Backend::kReference, nullptr, allow);
  };
  auto expect_refused = [&](uint32_t version, bool allow, const std::string& needle) {
    try {
      create(version, allow);
      FAIL() << "a plan of Kiln version " << version << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  EXPECT_NO_THROW(create(here + 1, false));                           // patch
  expect_refused(here + 100, false, "allow_minor_version_mismatch");  // minor
  EXPECT_NO_THROW(create(here + 100, true));
  expect_refused(here + 10000, true, "built with Kiln " + std::to_string(here / 10000 + 1) + ".");  // major
}

TEST(Plan, RejectsOtherGpuArchitecture) {
  KILN_REQUIRE_GPU();
  BuilderConfig c = reference_config();
  c.target = BuildTarget::kCuda;
  Plan plan = Builder().build(small_network(), c);
  plan.header.sm_arch = plan.header.sm_arch == 80 ? 90 : 80;
  try {
    Engine::create(Plan::deserialize(plan.serialize()), Backend::kCuda);
    FAIL() << "a plan for another GPU architecture was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rebuild the plan on this GPU"), std::string::npos) << e.what();
  }
}

TEST(Plan, RefusesOtherCudaLibraryVersions) {
  KILN_REQUIRE_GPU();
  BuilderConfig c = reference_config();
  c.target = BuildTarget::kCuda;
  Plan plan = Builder().build(small_network(), c);
  struct Case {
    uint32_t PlanHeader::*field;
    uint32_t minor_step;
    const char* name;
  };
  for (const Case& k :
       {Case{&PlanHeader::cuda_version, 10, "CUDA"}, Case{&PlanHeader::cublaslt_version, 100, "cuBLASLt"},
        Case{&PlanHeader::cudnn_version, 100, "cuDNN"}}) {
    Plan p = plan;
    p.header.*k.field += k.minor_step;
    try {
      Engine::create(Plan::deserialize(p.serialize()), Backend::kCuda);
      FAIL() << "a plan built against another " << k.name << " minor version was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("built with ") + k.name), std::string::npos)
          << e.what();
    }
    EXPECT_NO_THROW(Engine::create(Plan::deserialize(p.serialize()), Backend::kCuda, nullptr, true));
  }
}

// Mutates bytes behind the checksum (which is not verified here, so the parser itself is
// exercised) and before it (header). Every case ends in an Error or a plan whose engine still
// produces finite outputs of the right shape.
TEST(Plan, FuzzMutatedBytesEndCleanly) {
  std::vector<uint8_t> bytes = Builder().build(small_network(), reference_config()).serialize();
  std::mt19937 gen(1234);
  auto x = test::random_floats(2 * 6, 10);
  int errors = 0, ran = 0;
  const int kCases = 12000;
  for (int i = 0; i < kCases; ++i) {
    std::vector<uint8_t> b = bytes;
    int mode = i % 4;
    if (mode == 0) {  // flip 1-4 random bytes
      int n = 1 + gen() % 4;
      for (int j = 0; j < n; ++j) b[gen() % b.size()] = static_cast<uint8_t>(gen());
    } else if (mode == 1) {  // truncate
      b.resize(gen() % b.size());
    } else if (mode == 2) {  // overwrite a 64-bit field with a large or negative value
      size_t at = gen() % (b.size() - 8);
      uint64_t v = (gen() % 2) ? ~uint64_t{0} - (gen() % 16) : (uint64_t{1} << (gen() % 63));
      std::memcpy(b.data() + at, &v, 8);
    } else {  // insert or delete a run
      size_t at = gen() % b.size();
      if (gen() % 2) {
        b.insert(b.begin() + at, 1 + gen() % 16, static_cast<uint8_t>(gen()));
      } else {
        b.erase(b.begin() + at, b.begin() + std::min(b.size(), at + 1 + gen() % 16));
      }
    }
    try {
      Plan p = Plan::deserialize(b.data(), b.size(), /*verify_checksum=*/false);
      auto engine = Engine::create(std::move(p), Backend::kReference);
      auto ctx = engine->create_execution_context();
      // The plan parsed and validated: run it on inputs its own profile accepts.
      for (const auto& name : engine->input_names()) {
        Dims d = engine->binding(name).dims;
        for (auto& v : d) v = v < 0 ? 2 : v;
        ctx->set_input_shape(name, d);
      }
      std::vector<std::vector<uint8_t>> buffers;
      for (const auto& name : engine->input_names()) {
        const Tensor& t = engine->binding(name);
        buffers.emplace_back(volume(ctx->tensor_shape(name)) * dtype_size(t.dtype), 0x3c);
        ctx->set_tensor_address(name, buffers.back().data());
      }
      for (const auto& name : engine->output_names()) {
        const Tensor& t = engine->binding(name);
        buffers.emplace_back(volume(ctx->tensor_shape(name)) * dtype_size(t.dtype));
        ctx->set_tensor_address(name, buffers.back().data());
      }
      ctx->enqueue(nullptr);
      ++ran;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors + ran, kCases);
  EXPECT_GT(errors, kCases / 2);  // most mutations must be detected
  std::cout << "fuzz: " << errors << " clean errors, " << ran << " plans still valid and run\n";
}

// With the checksum verified (the normal path), a mutated plan either is refused or runs and
// gives exactly the original outputs (mutations confined to informational header fields).
TEST(Plan, FuzzWithChecksumGivesErrorOrCorrectResult) {
  Plan plan = Builder().build(small_network(), reference_config());
  std::vector<uint8_t> bytes = plan.serialize();
  auto x = test::random_floats(2 * 6, 11);
  auto want = test::run_float(Engine::create(plan, Backend::kReference), {{"x", {{2, 6}, x}}});
  std::mt19937 gen(99);
  int errors = 0, correct = 0;
  const int kCases = 10000;
  for (int i = 0; i < kCases; ++i) {
    std::vector<uint8_t> b = bytes;
    int n = 1 + gen() % 3;
    for (int j = 0; j < n; ++j) b[gen() % b.size()] ^= static_cast<uint8_t>(1 + gen() % 255);
    if (i % 5 == 0) b.resize(gen() % b.size());
    try {
      auto got =
          test::run_float(Engine::create(Plan::deserialize(b), Backend::kReference), {{"x", {{2, 6}, x}}});
      ASSERT_EQ(got, want) << "case " << i << ": a mutated plan ran and gave a different result";
      ++correct;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors + correct, kCases);
  std::cout << "fuzz (checksum on): " << errors << " clean errors, " << correct << " correct results\n";
}

}  // namespace
}  // namespace kiln

// The checksum's definition (four lanes over 8-byte words, then the tail bytes and the size), as
// plan files of format 2 and 3 hold it: an optimization of plan_checksum must keep these values,
// or saved plans stop loading.
TEST(Plan, ChecksumMatchesItsDefinition) {
  auto definition = [](const std::vector<uint8_t>& d) {
    constexpr uint64_t kBasis = 1469598103934665603ull, kPrime = 1099511628211ull;
    uint64_t lane[4] = {kBasis, kBasis ^ 1, kBasis ^ 2, kBasis ^ 3};
    size_t i = 0;
    for (; i + 32 <= d.size(); i += 32) {
      for (int k = 0; k < 4; ++k) {
        uint64_t w;
        std::memcpy(&w, d.data() + i + 8 * k, sizeof(w));
        lane[k] = (lane[k] ^ w) * kPrime;
        lane[k] ^= lane[k] >> 29;
      }
    }
    uint64_t h = kBasis;
    for (uint64_t l : lane) h = (h ^ l) * kPrime;
    for (; i < d.size(); ++i) h = (h ^ d[i]) * kPrime;
    return (h ^ static_cast<uint64_t>(d.size())) * kPrime;
  };
  std::mt19937_64 rng(11);
  for (size_t size : {size_t{0}, size_t{31}, size_t{1000}, (size_t{20} << 20) + 13}) {
    std::vector<uint8_t> d(size);
    for (auto& b : d) b = static_cast<uint8_t>(rng());
    EXPECT_EQ(kiln::plan_checksum(d.data(), d.size()), definition(d)) << size << " bytes";
  }
}

// Format 4's payload checksum: 16 MiB blocks, each plan_checksum'ed (on several threads), then
// plan_checksum of their little-endian hashes. Sizes around the block boundary.
TEST(Plan, BlockChecksumMatchesItsDefinition) {
  auto definition = [](const std::vector<uint8_t>& d) {
    const size_t block = kiln::kChecksumBlockBytes;
    const size_t blocks = std::max<size_t>(1, (d.size() + block - 1) / block);
    std::vector<uint8_t> hashes;
    for (size_t b = 0; b < blocks; ++b) {
      const size_t begin = b * block;
      const uint64_t h = kiln::plan_checksum(d.data() + begin, std::min(block, d.size() - begin));
      for (int i = 0; i < 8; ++i) hashes.push_back(static_cast<uint8_t>(h >> (8 * i)));
    }
    return kiln::plan_checksum(hashes.data(), hashes.size());
  };
  std::mt19937_64 rng(12);
  const size_t block = kiln::kChecksumBlockBytes;
  for (size_t size : {size_t{0}, size_t{1000}, block - 1, block, block + 13, 9 * block + 5}) {
    std::vector<uint8_t> d(size);
    for (auto& b : d) b = static_cast<uint8_t>(rng());
    const uint64_t h = kiln::plan_payload_checksum(d.data(), d.size(), 4);
    EXPECT_EQ(h, definition(d)) << size << " bytes";
    EXPECT_EQ(kiln::plan_payload_checksum(d.data(), d.size(), 3), kiln::plan_checksum(d.data(), d.size()));
    if (size > block) {  // a changed byte in the last block changes it
      d[size - 1] ^= 1;
      EXPECT_NE(kiln::plan_payload_checksum(d.data(), d.size(), 4), h);
    }
  }
}

// A plan saved in format 3 (one checksum over the whole payload) still loads, and is written back
// in the current format.
TEST(Plan, Format3PlansStillLoad) {
  const kiln::Plan plan = kiln::Builder().build(kiln::small_network(), kiln::reference_config());
  std::vector<uint8_t> bytes = plan.serialize();
  ASSERT_EQ(bytes[8], kiln::kPlanFormatVersion);
  constexpr size_t kHeader = 8 + 6 * 4 + 8;  // magic, six version fields, payload size
  bytes[8] = 3;
  const uint64_t body = kiln::plan_checksum(bytes.data() + kHeader + 8, bytes.size() - kHeader - 8);
  std::vector<uint8_t> sealed(bytes.begin(), bytes.begin() + kHeader);
  for (int i = 0; i < 8; ++i) sealed.push_back(static_cast<uint8_t>(body >> (8 * i)));
  const uint64_t checksum = kiln::plan_checksum(sealed.data(), sealed.size());
  for (int i = 0; i < 8; ++i) bytes[kHeader + i] = static_cast<uint8_t>(checksum >> (8 * i));
  const kiln::Plan old = kiln::Plan::deserialize(bytes);
  EXPECT_EQ(old.header.format_version, 3u);
  EXPECT_EQ(old.serialize(), plan.serialize());
}
