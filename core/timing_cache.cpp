#include "core/timing_cache.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <sys/stat.h>
#include <unistd.h>

#include "core/plan.h"
#include "ir/dims.h"
#include "ir/error.h"
#include "ir/logging.h"
#include "kernels/device.h"

namespace kiln {
namespace {

constexpr char kMagic[] = "KILN-TIMING-CACHE";

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

bool unescape(const std::string& s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\') {
      *out += s[i];
      continue;
    }
    if (++i == s.size()) return false;
    switch (s[i]) {
      case '\\':
        *out += '\\';
        break;
      case 't':
        *out += '\t';
        break;
      case 'n':
        *out += '\n';
        break;
      default:
        return false;
    }
  }
  return true;
}

void put_attr(std::ostringstream& s, const AttrValue& v) {
  std::visit(
      [&s](const auto& x) {
        using V = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<V, int64_t>) {
          s << "i" << x;
        } else if constexpr (std::is_same_v<V, double>) {
          char buf[32];
          std::snprintf(buf, sizeof(buf), "%.17g", x);
          s << "f" << buf;
        } else if constexpr (std::is_same_v<V, std::string>) {
          s << "s" << x.size() << ":" << x;
        } else {
          s << (std::is_same_v<V, std::vector<int64_t>> ? "I[" : "F[");
          for (size_t i = 0; i < x.size(); ++i) {
            char buf[32];
            if constexpr (std::is_same_v<V, std::vector<double>>) {
              std::snprintf(buf, sizeof(buf), "%.17g", x[i]);
            } else {
              std::snprintf(buf, sizeof(buf), "%lld", static_cast<long long>(x[i]));
            }
            s << (i ? "," : "") << buf;
          }
          s << "]";
        }
      },
      v);
}

}  // namespace

TimingEnvironment TimingEnvironment::current() {
  TimingEnvironment env;
  env.sm_arch = cuda_device_count() > 0 ? cuda_device_arch() : 0;
  env.cuda_version = ::kiln::cuda_runtime_version();
  env.cublaslt_version = ::kiln::cublaslt_version();
  env.kiln_version = static_cast<int>(kiln_version_number());
  env.cudnn_version = cuda_device_count() > 0 ? ::kiln::cudnn_runtime_version() : ::kiln::cudnn_version();
  return env;
}

std::string timing_cache_key(const Layer& layer, const std::string& kernel_name,
                             const std::vector<TensorDesc>& inputs, const TimingEnvironment& env) {
  std::ostringstream s;
  s << layer.op << "|" << kernel_name << "|";
  for (const auto& [name, value] : layer.attrs.values()) {
    if (name == "tactic") continue;  // the thing being chosen
    s << name << "=";
    put_attr(s, value);
    s << ";";
  }
  s << "|";
  for (const auto& d : inputs) s << dtype_name(d.dtype) << to_string(d.dims) << ";";
  s << "|sm" << env.sm_arch << "|cuda" << env.cuda_version << "|cublaslt" << env.cublaslt_version << "|cudnn"
    << env.cudnn_version << "|kiln" << env.kiln_version;
  return s.str();
}

TimingCache TimingCache::parse(const std::string& text, const std::string& origin) {
  std::istringstream in(text);
  std::string line;
  KILN_CHECK(std::getline(in, line) && line.rfind(kMagic, 0) == 0,
             origin << " is not a Kiln timing cache (no '" << kMagic << "' header)");
  std::string version = line.substr(sizeof(kMagic) - 1);
  KILN_CHECK(version == " " + std::to_string(kTimingCacheVersion),
             origin << " is a Kiln timing cache of format '" << version.substr(version.empty() ? 0 : 1)
                    << "'; this Kiln reads format " << kTimingCacheVersion);
  TimingCache cache;
  int number = 1;
  while (std::getline(in, line)) {
    ++number;
    if (line.empty()) continue;
    size_t t1 = line.find('\t');
    size_t t2 = t1 == std::string::npos ? t1 : line.find('\t', t1 + 1);
    std::string key;
    bool ok = t2 != std::string::npos && line.find('\t', t2 + 1) == std::string::npos &&
              unescape(line.substr(0, t1), &key) && !key.empty();
    Entry e;
    if (ok) {
      const std::string tactic = line.substr(t1 + 1, t2 - t1 - 1), ms = line.substr(t2 + 1);
      char* end = nullptr;
      errno = 0;
      long t = std::strtol(tactic.c_str(), &end, 10);
      ok = !tactic.empty() && *end == '\0' && errno == 0 && t >= 0 && t < (1L << 30);
      e.tactic = static_cast<int>(t);
      e.ms = std::strtod(ms.c_str(), &end);
      ok = ok && !ms.empty() && *end == '\0' && e.ms >= 0.0 && e.ms < 1e9;
    }
    KILN_CHECK(ok, origin << ": line " << number << " is not a timing entry; the file is corrupt");
    cache.entries_[key] = e;
  }
  return cache;
}

TimingCache TimingCache::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return TimingCache();  // no cache yet
  std::stringstream buf;
  buf << f.rdbuf();
  try {
    TimingCache c = parse(buf.str(), "timing cache '" + path + "'");
    KILN_LOG(kVerbose, "timing cache '" << path << "': " << c.size() << " entries");
    return c;
  } catch (const Error& e) {
    KILN_LOG(kWarning, e.what() << "; ignoring it (it is rewritten after this build)");
    return TimingCache();
  }
}

std::string TimingCache::serialize() const {
  std::ostringstream s;
  s << kMagic << " " << kTimingCacheVersion << "\n";
  for (const auto& [key, e] : entries_) {
    char ms[32];
    std::snprintf(ms, sizeof(ms), "%.6g", e.ms);
    s << escape(key) << "\t" << e.tactic << "\t" << ms << "\n";
  }
  return s.str();
}

void TimingCache::save(const std::string& path) const {
  // Parent directories (mkdir -p); a failure surfaces when the file is opened below.
  for (size_t slash = path.find('/', 1); slash != std::string::npos; slash = path.find('/', slash + 1)) {
    ::mkdir(path.substr(0, slash).c_str(), 0755);
  }
  // A private temporary name, renamed over the cache: concurrent builds never read half a file.
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    KILN_CHECK(f, "cannot write the timing cache '" << path << "' (" << tmp
                                                    << "); check the directory exists and is writable");
    const std::string text = serialize();
    f.write(text.data(), static_cast<std::streamsize>(text.size()));
    KILN_CHECK(f.good(), "writing the timing cache '" << path << "' failed");
  }
  KILN_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0,
             "cannot replace the timing cache '" << path << "': " << std::strerror(errno));
}

const TimingCache::Entry* TimingCache::find(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

bool TimingCache::operator==(const TimingCache& o) const {
  if (entries_.size() != o.entries_.size()) return false;
  for (const auto& [k, e] : entries_) {
    const Entry* f = o.find(k);
    if (!f || f->tactic != e.tactic) return false;
  }
  return true;
}

}  // namespace kiln
