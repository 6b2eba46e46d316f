// safetensors reader: a valid file round-trips; truncated, malformed and hostile files give clean
// errors (a byte-mutation fuzz of 10,000 cases must never crash).
#include <random>

#include "core/safetensors.h"
#include "test_util.h"

namespace kiln {
namespace {

std::vector<uint8_t> make_file(const std::string& header, const std::vector<uint8_t>& data) {
  std::vector<uint8_t> out(8);
  uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> sample_file() {
  std::vector<uint8_t> data(24 + 8);
  float w[6] = {1, 2, 3, 4, 5, 6};
  int64_t idx = -7;
  std::memcpy(data.data(), w, 24);
  std::memcpy(data.data() + 24, &idx, 8);
  return make_file(
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("i":{"dtype":"I64","shape":[],"data_offsets":[24,32]}}  )",
      data);
}

TEST(Safetensors, ParsesTensors) {
  auto file = sample_file();
  auto t = parse_safetensors(file.data(), file.size());
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t["w"].dtype, DataType::kFloat32);
  EXPECT_EQ(t["w"].dims, (Dims{2, 3}));
  EXPECT_EQ(reinterpret_cast<const float*>(t["w"].data->data())[5], 6.f);
  EXPECT_EQ(t["i"].dims, Dims{});
  EXPECT_EQ(*reinterpret_cast<const int64_t*>(t["i"].data->data()), -7);
}

void expect_error(const std::vector<uint8_t>& file, const std::string& fragment) {
  try {
    parse_safetensors(file.data(), file.size());
    FAIL() << "accepted a bad file; expected an error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RefusesBadFiles) {
  auto good = sample_file();
  expect_error(std::vector<uint8_t>(good.begin(), good.begin() + 5), "too short");
  expect_error(std::vector<uint8_t>(good.begin(), good.end() - 4), "outside the file");
  expect_error(
      make_file(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
      "dtype 'F64'");
  expect_error(
      make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::vector<uint8_t>(8)),
      "needs 12");
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                         std::vector<uint8_t>(12)),
               "overlaps");
  expect_error(make_file(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})", std::vector<uint8_t>(4)),
               "ends early");
  std::vector<uint8_t> huge(16, 0xff);
  expect_error(huge, "does not fit");
  EXPECT_THROW(load_safetensors("/nonexistent/weights.safetensors"), Error);
}

TEST(Safetensors, FuzzNeverCrashes) {
  auto good = sample_file();
  std::mt19937 gen(7);
  int errors = 0, parsed = 0;
  for (int i = 0; i < 10000; ++i) {
    auto f = good;
    int flips = 1 + static_cast<int>(gen() % 4);
    for (int j = 0; j < flips; ++j) f[gen() % f.size()] = static_cast<uint8_t>(gen());
    if (gen() % 8 == 0) f.resize(gen() % f.size());
    try {
      auto t = parse_safetensors(f.data(), f.size());
      for (const auto& kv : t)
        ASSERT_EQ(kv.second.data->size(), volume(kv.second.dims) * dtype_size(kv.second.dtype));
      ++parsed;
    } catch (const Error&) {
      ++errors;
    }
  }
  EXPECT_EQ(errors + parsed, 10000);
  EXPECT_GT(errors, 5000);
}

}  // namespace
}  // namespace kiln
