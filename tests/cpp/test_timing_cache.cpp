// TimingCache: text round trip, escaping, corrupt and foreign files, and what the key depends on.
#include <cstdio>
#include <fstream>
#include <mutex>

#include <sys/stat.h>
#include <unistd.h>

#include "core/timing_cache.h"
#include "ir/logging.h"
#include "test_util.h"

namespace kiln {
namespace {

std::string temp_path(const std::string& name) {
  return ::testing::TempDir() + "kiln_timing_cache_test_" + std::to_string(::getpid()) + "/" + name;
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

// Collects warnings while alive.
struct CaptureLog {
  std::mutex mutex;
  std::vector<std::string> messages;
  CaptureLog() {
    set_log_sink([this](Severity s, const std::string& m) {
      std::lock_guard<std::mutex> lock(mutex);
      if (s <= Severity::kWarning) messages.push_back(m);
    });
  }
  ~CaptureLog() { set_log_sink(nullptr); }
};

TEST(TimingCache, RoundTripsThroughTextAndFile) {
  TimingCache c;
  c.insert("convolution|cudnn_convolution|pads=I[1,1];|float16[1,64,56,56];|sm90", {3, 0.0123});
  c.insert("odd\tkey\nwith\\escapes", {0, 1.5});
  c.insert("another", {17, 0.0});
  TimingCache parsed = TimingCache::parse(c.serialize(), "test");
  EXPECT_EQ(parsed.size(), 3u);
  EXPECT_TRUE(parsed == c);
  ASSERT_NE(parsed.find("odd\tkey\nwith\\escapes"), nullptr);
  EXPECT_EQ(parsed.find("odd\tkey\nwith\\escapes")->tactic, 0);
  EXPECT_NEAR(parsed.find("convolution|cudnn_convolution|pads=I[1,1];|float16[1,64,56,56];|sm90")->ms, 0.0123,
              1e-6);
  EXPECT_EQ(parsed.find("missing"), nullptr);

  const std::string path = temp_path("nested/dir/timing.cache");  // directories are created
  c.save(path);
  TimingCache loaded = TimingCache::load(path);
  EXPECT_TRUE(loaded == c);
  // Overwrite in place.
  c.insert("fourth", {2, 0.5});
  c.save(path);
  EXPECT_EQ(TimingCache::load(path).size(), 4u);
}

TEST(TimingCache, MissingFileIsEmptyWithoutWarning) {
  CaptureLog log;
  EXPECT_EQ(TimingCache::load(temp_path("does_not_exist.cache")).size(), 0u);
  EXPECT_TRUE(log.messages.empty());
}

TEST(TimingCache, CorruptOrForeignFilesAreRefusedByParseAndIgnoredByLoad) {
  const std::string header = "KILN-TIMING-CACHE " + std::to_string(kTimingCacheVersion) + "\n";
  struct Case {
    std::string text, message;
  };
  const std::vector<Case> cases = {
      {"", "not a Kiln timing cache"},
      {"\x89PNG\r\n\x1a\n binary junk", "not a Kiln timing cache"},
      {"KILN-TIMING-CACHE 99\nkey\t1\t0.5\n", "format '99'"},
      {header + "key-without-fields\n", "line 2"},
      {header + "key\t1\n", "line 2"},
      {header + "good\t1\t0.5\nkey\tx\t0.5\n", "line 3"},
      {header + "key\t-1\t0.5\n", "line 2"},
      {header + "key\t1\tNaNx\n", "line 2"},
      {header + "key\t1\t0.5\textra\n", "line 2"},
      {header + "bad\\qescape\t1\t0.5\n", "line 2"},
  };
  mkdir((::testing::TempDir() + "kiln_timing_cache_test_" + std::to_string(::getpid())).c_str(), 0755);
  for (const auto& c : cases) {
    try {
      TimingCache::parse(c.text, "cache 'x'");
      ADD_FAILURE() << "parsed: " << c.text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("cache 'x'"), std::string::npos) << e.what();
    }
    const std::string path = temp_path("corrupt.cache");
    write_file(path, c.text);
    CaptureLog log;
    EXPECT_EQ(TimingCache::load(path).size(), 0u) << c.text;
    ASSERT_EQ(log.messages.size(), 1u) << c.text;
    EXPECT_NE(log.messages[0].find("ignoring it"), std::string::npos) << log.messages[0];
    EXPECT_NE(log.messages[0].find(path), std::string::npos) << log.messages[0];
  }
}

TEST(TimingCache, SaveIntoAnUnwritablePlaceFailsClearly) {
  TimingCache c;
  c.insert("k", {1, 1.0});
  EXPECT_THROW(c.save("/proc/kiln/not/writable.cache"), Error);
}

TEST(TimingCache, KeyDependsOnEverythingButTheTactic) {
  Layer l;
  l.name = "conv1";  // names are not part of the key: equal layers share timings
  l.op = "convolution";
  l.attrs.set("pads", std::vector<int64_t>{1, 1}).set("groups", int64_t{1}).set("alpha", 0.5);
  std::vector<TensorDesc> in = {{DataType::kFloat16, {1, 64, 56, 56}}, {DataType::kFloat16, {64, 64, 3, 3}}};
  TimingEnvironment env{90, 13000, 130000, 91900, 100};
  const std::string base = timing_cache_key(l, "cudnn_convolution", in, env);

  Layer renamed = l;
  renamed.name = "conv2";
  EXPECT_EQ(timing_cache_key(renamed, "cudnn_convolution", in, env), base);
  Layer with_tactic = l;
  with_tactic.attrs.set("tactic", int64_t{4});
  EXPECT_EQ(timing_cache_key(with_tactic, "cudnn_convolution", in, env), base);

  std::vector<std::string> keys = {base};
  auto differs = [&](const std::string& k, const char* what) {
    for (const auto& other : keys) EXPECT_NE(k, other) << what;
    keys.push_back(k);
  };
  Layer op = l;
  op.op = "deconvolution";
  differs(timing_cache_key(op, "cudnn_convolution", in, env), "op");
  differs(timing_cache_key(l, "cudnn_deconvolution", in, env), "kernel name");
  Layer attr = l;
  attr.attrs.set("pads", std::vector<int64_t>{0, 0});
  differs(timing_cache_key(attr, "cudnn_convolution", in, env), "int list attribute");
  attr = l;
  attr.attrs.set("alpha", 0.25);
  differs(timing_cache_key(attr, "cudnn_convolution", in, env), "float attribute");
  attr = l;
  attr.attrs.set("groups", int64_t{2});
  differs(timing_cache_key(attr, "cudnn_convolution", in, env), "int attribute");
  attr = l;
  attr.attrs.set("layout", std::string("nhwc"));
  differs(timing_cache_key(attr, "cudnn_convolution", in, env), "extra attribute");
  auto dims = in;
  dims[0].dims = {2, 64, 56, 56};
  differs(timing_cache_key(l, "cudnn_convolution", dims, env), "input dims");
  auto types = in;
  types[0].dtype = DataType::kBFloat16;
  differs(timing_cache_key(l, "cudnn_convolution", types, env), "input dtype");
  TimingEnvironment e = env;
  e.sm_arch = 80;
  differs(timing_cache_key(l, "cudnn_convolution", in, e), "sm arch");
  e = env;
  e.cuda_version = 12080;
  differs(timing_cache_key(l, "cudnn_convolution", in, e), "CUDA version");
  e = env;
  e.cublaslt_version = 120000;
  differs(timing_cache_key(l, "cudnn_convolution", in, e), "cuBLASLt version");
  e = env;
  e.cudnn_version = 90100;
  differs(timing_cache_key(l, "cudnn_convolution", in, e), "cuDNN version");
  e = env;
  e.kiln_version = 200;
  differs(timing_cache_key(l, "cudnn_convolution", in, e), "Kiln version");
}

}  // namespace
}  // namespace kiln
