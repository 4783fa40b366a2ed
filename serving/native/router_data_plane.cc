// The canary router's data plane in C++: the request path of crocodile.serving.router, compiled.
//
// Why: a Python gRPC hop costs 0.4-0.55 ms of CPU per request on the 2-core host, more than the
// router's whole latency budget (serving/README.md, benchmarks/serving_latency.py); gRPC's C++
// completion-queue API, one event thread per queue, forwards a request for ~0.13 ms.
//
// What it does per Predict/Regress request, exactly as the Python router does:
//   - reads the model spec and the domain and user (context Example, else the first Example, else
//     metadata x-domain-id / x-user-id) from the wire bytes, without parsing the candidates;
//   - assigns the arm: SHA-256("experiment\x1fsalt\x1fdomain\x1fuser")[:8] / 2^64 < the domain's
//     canary share, unless the canary is aborted;
//   - forwards the client's bytes plus one appended model_spec holding only version_label (protobuf
//     merges repeated occurrences of a message field), with x-request-id;
//   - on a canary failure (serving reasons only) falls back to stable when the policy says so;
//   - answers the backend's bytes unchanged with trailing metadata x-crocodile-arm/-version;
//   - records it (see "records" below): request metrics summed per label set and sent to the
//     control plane as deltas, the exposure line appended to the exposure log, the canary's
//     outcome sent for the breaker; a request whose canary failed is sent whole, for the control
//     plane to log and count as the Python router does.
// Everything else goes unchanged, with the client's metadata and deadline, to the Python router
// (the control plane, on --slow-path): requests the router must refuse or that name a version
// (PERMISSION_DENIED, INVALID_ARGUMENT, UNAUTHENTICATED: its messages and records), GetModelMetadata,
// grpc.health.v1 Check. So every error text and rule has one implementation, in Python.
//
// Control (stdin, one command per line; hex for strings):
//   policy GEN EXPERIMENT SALT DEFAULT_SHARE fallback|fail N [DOMAIN SHARE]*N
//   abort GEN          the breaker of policy GEN tripped: assign every user to stable
//   tokens N [TOKEN]*N bearer tokens required on the router's port (none: no check)
//   start              build the server; stdout's first line is then "ready PORT"
//   sync TOKEN         write "sync TOKEN" to stdout after every record made so far
//   EOF                graceful stop: no new calls, in-flight ones answered, records written
// Records (stdout after "ready", tab-separated, written every kWriteEvery; see native_router.py):
//   m GEN METHOD DOMAIN ASSIGNED SERVED VERSION CODE REQUESTS SECONDS BUCKET_COUNTS   (deltas)
//   o GEN FAILED MS                                           a canary call, for the breaker
//   r GEN TIME LATENCY_US METHOD REQUEST_ID DOMAIN USER ASSIGNED SERVED VERSION FALLBACK CODE
//     CANARY_CALL CANARY_MS CANARY_CODE CANARY_DETAILS          a request whose canary failed
//
// Build: make native-router (Debian: apt-get install g++ libgrpc++-dev).
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cerrno>
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr char kService[] = "/tensorflow.serving.PredictionService/";
constexpr char kUnknownLabel[] = "Unrecognized servable version label";
constexpr auto kWriteEvery = std::chrono::milliseconds(2);
constexpr size_t kMaxPendingBytes = 16 << 20;  // ~100k records
constexpr int kCallsWaiting = 32;  // calls requested ahead per event thread

// ---------------------------------------------------------------- protobuf wire reading
struct Span {
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::string str() const { return std::string(reinterpret_cast<const char*>(data), size); }
};

class Wire {
 public:
  explicit Wire(Span s) : p_(s.data), end_(s.data + s.size) {}
  bool done() const { return p_ == end_; }
  bool ok() const { return ok_; }
  bool varint(uint64_t* out) {
    uint64_t value = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ == end_) return fail();
      uint8_t byte = *p_++;
      value |= uint64_t(byte & 0x7f) << shift;
      if (!(byte & 0x80)) {
        *out = value;
        return true;
      }
    }
    return fail();
  }
  // Next field: its number and wire type; for length-delimited fields the payload in *span, for
  // varints the value in *value; other wire types are skipped.
  bool next(uint32_t* field, uint32_t* type, Span* span, uint64_t* value) {
    uint64_t tag;
    if (!varint(&tag)) return false;
    *field = uint32_t(tag >> 3);
    *type = uint32_t(tag & 7);
    if (*field == 0) return fail();
    switch (*type) {
      case 0: return varint(value);
      case 1: return skip(8);
      case 5: return skip(4);
      case 2: {
        uint64_t n;
        if (!varint(&n) || n > uint64_t(end_ - p_)) return fail();
        span->data = p_;
        span->size = size_t(n);
        p_ += n;
        return true;
      }
      default: return fail();  // groups: never in these messages
    }
  }

 private:
  bool fail() { ok_ = false; return false; }
  bool skip(size_t n) {
    if (n > size_t(end_ - p_)) return fail();
    p_ += n;
    return true;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  bool ok_ = true;
};

// Iterates the fields of a message; false at the end or on malformed bytes (check wire.ok()).
#define FOR_FIELDS(span, wire, f, t, s, v) \
  Wire wire(span);                          \
  uint32_t f, t;                            \
  Span s;                                   \
  uint64_t v;                               \
  while (!wire.done() && wire.next(&f, &t, &s, &v))

struct Spec {
  std::string name;
  bool explicit_version = false;  // version or version_label set
};

bool ParseSpec(Span span, Spec* spec) {  // tensorflow.serving.ModelSpec; merged like protobuf
  FOR_FIELDS(span, w, f, t, s, v) {
    if (f == 1 && t == 2) spec->name = s.str();
    if ((f == 2 && t == 2) || (f == 4 && t == 2)) spec->explicit_version = true;
  }
  return w.ok();
}

struct Key {
  bool has_domain = false, has_user = false;
  int64_t domain = 0;
  std::string user;
};

// One feature of a tf.Example: 0 when absent, else the oneof kind (1 bytes, 2 float, 3 int64)
// and its first value. False when the bytes are malformed.
struct FeatureValue {
  int kind = 0;
  bool has_value = false;
  std::string bytes;
  int64_t int64 = 0;
};

bool ParseFeature(Span span, FeatureValue* out) {
  *out = FeatureValue();
  FOR_FIELDS(span, w, f, t, s, v) {
    if (t != 2 || f < 1 || f > 3) continue;
    if (out->kind != int(f)) *out = FeatureValue();  // oneof: the last kind set wins
    out->kind = int(f);
    if (out->has_value) continue;
    FOR_FIELDS(s, list, lf, lt, ls, lv) {
      if (lf != 1) continue;
      if (f == 1 && lt == 2) {
        out->bytes = ls.str();
        out->has_value = true;
      } else if (f == 3 && lt == 0) {
        out->int64 = int64_t(lv);
        out->has_value = true;
      } else if (f == 3 && lt == 2) {  // packed
        Wire packed(ls);
        uint64_t first;
        if (ls.size > 0) {
          if (!packed.varint(&first)) return false;
          out->int64 = int64_t(first);
          out->has_value = true;
        }
      }
      if (out->has_value) break;
    }
    if (!list.ok()) return false;
  }
  return w.ok();
}

bool ValidUtf8(const std::string& s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    uint8_t c = uint8_t(s[i]);
    int extra = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (extra < 0 || i + extra >= n + (extra == 0)) return false;
    uint32_t cp = extra == 0 ? c : extra == 1 ? (c & 0x1f) : extra == 2 ? (c & 0x0f) : (c & 0x07);
    for (int k = 1; k <= extra; ++k) {
      uint8_t d = uint8_t(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((extra == 1 && cp < 0x80) || (extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) ||
        (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
      return false;
    i += extra + 1;
  }
  return true;
}

// One entry of a map field: key 1, value 2 (both length-delimited here). A value in several
// pieces would merge: false, left to the slow path.
bool MapEntry(Span entry, Span* key, Span* value) {
  bool has_value = false;
  FOR_FIELDS(entry, w, f, t, s, v) {
    if (f == 1 && t == 2) *key = s;
    if (f == 2 && t == 2) {
      if (has_value) return false;
      *value = s;
      has_value = true;
    }
  }
  return w.ok();
}

// Key from one tf.Example. False: leave the request to the slow path (malformed, or a key
// feature of the wrong kind: the Python router words that error).
bool KeyFromExample(Span example, Key* key) {
  Span features;
  bool has_features = false;
  FOR_FIELDS(example, w, f, t, s, v) {
    if (f == 1 && t == 2) {  // Features; a repeated occurrence would merge: leave that to Python
      if (has_features) return false;
      features = s;
      has_features = true;
    }
  }
  if (!w.ok()) return false;
  if (!has_features) return true;
  FeatureValue domain, user;
  bool seen_domain = false, seen_user = false;
  FOR_FIELDS(features, fw, ff, ft, fs, fv) {
    if (ff != 1 || ft != 2) continue;
    Span name, value;
    if (!MapEntry(fs, &name, &value)) return false;
    std::string n = name.str();
    if (n == "domain_id") {  // a map: the last entry with the key wins
      seen_domain = true;
      if (!ParseFeature(value, &domain)) return false;
    } else if (n == "user_id") {
      seen_user = true;
      if (!ParseFeature(value, &user)) return false;
    }
  }
  if (!fw.ok()) return false;
  if (seen_domain) {
    if (domain.kind != 3 || !domain.has_value) return false;
    key->has_domain = true;
    key->domain = domain.int64;
  }
  if (seen_user) {
    if (user.kind != 1 || !user.has_value || !ValidUtf8(user.bytes)) return false;
    key->has_user = true;
    key->user = user.bytes;
  }
  return true;
}

void MergeKey(Key* first, const Key& second) {
  if (!first->has_domain && second.has_domain) {
    first->has_domain = true;
    first->domain = second.domain;
  }
  if (!first->has_user && second.has_user) {
    first->has_user = true;
    first->user = second.user;
  }
}

// PredictRequest: model_spec 1, inputs 2 (map entries: key 1, TensorProto value 2; string_val 8).
bool ParsePredict(Span body, Spec* spec, Key* key) {
  Span examples_tensor;
  bool has_tensor = false;
  FOR_FIELDS(body, w, f, t, s, v) {
    if (f == 1 && t == 2) {
      if (!ParseSpec(s, spec)) return false;
    } else if (f == 2 && t == 2) {
      Span name, value;
      if (!MapEntry(s, &name, &value)) return false;
      if (name.str() == "examples") {
        examples_tensor = value;
        has_tensor = true;
      }
    }
  }
  if (!w.ok()) return false;
  if (!has_tensor) return true;
  FOR_FIELDS(examples_tensor, tw, tf, tt, ts, tv) {
    if (tf == 8 && tt == 2) return KeyFromExample(ts, key);
  }
  return tw.ok();
}

// RegressionRequest: model_spec 1, input 2 (Input: example_list 1 {examples 1},
// example_list_with_context 2 {examples 1, context 2}).
bool ParseRegress(Span body, Spec* spec, Key* key) {
  Span input;
  bool has_input = false;
  FOR_FIELDS(body, w, f, t, s, v) {
    if (f == 1 && t == 2) {
      if (!ParseSpec(s, spec)) return false;
    } else if (f == 2 && t == 2) {
      if (has_input) return false;  // merged pieces: leave to Python
      input = s;
      has_input = true;
    }
  }
  if (!w.ok()) return false;
  if (!has_input) return true;
  Span list;
  uint32_t kind = 0;
  FOR_FIELDS(input, iw, inf, it, is, iv) {
    if ((inf == 1 || inf == 2) && it == 2) {
      if (kind != 0) return false;
      kind = inf;
      list = is;
    }
  }
  if (!iw.ok()) return false;
  if (kind == 0) return true;
  Span context, first;
  bool has_context = false, has_first = false;
  FOR_FIELDS(list, lw, lf, lt, ls, lv) {
    if (lf == 1 && lt == 2 && !has_first) {
      first = ls;
      has_first = true;
    } else if (kind == 2 && lf == 2 && lt == 2) {
      if (has_context) return false;
      context = ls;
      has_context = true;
    }
  }
  if (!lw.ok()) return false;
  if (kind == 2 && !KeyFromExample(has_context ? context : Span(), key)) return false;
  if (has_first) {
    Key from_first;
    if (!KeyFromExample(first, &from_first)) return false;
    MergeKey(key, from_first);
  }
  return true;
}

// PredictResponse / RegressionResponse: model_spec 2 -> version 2 (Int64Value) -> value 1.
bool ResponseVersion(Span body, int64_t* version) {
  *version = 0;
  FOR_FIELDS(body, w, f, t, s, v) {
    if (f != 2 || t != 2) continue;
    FOR_FIELDS(s, mw, mf, mt, ms, mv) {
      if (mf != 2 || mt != 2) continue;
      FOR_FIELDS(ms, vw, vf, vt, vs, vv) {
        if (vf == 1 && vt == 0) *version = int64_t(vv);
      }
      if (!vw.ok()) return false;
    }
    if (!mw.ok()) return false;
  }
  return w.ok();
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  buffer.Dump(&slices).IgnoreError();
  std::string out;
  out.reserve(buffer.Length());
  for (const auto& slice : slices) out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  return out;
}

std::string LabelOverride(const std::string& label) {  // field 1 { field 4: label }
  std::string spec = std::string(1, char(0x22)) + char(label.size()) + label;
  return std::string(1, char(0x0a)) + char(spec.size()) + spec;
}

std::string Hex(const std::string& s) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * s.size() + 1);
  for (unsigned char c : s) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out.empty() ? "-" : out;
}

std::string Unhex(const std::string& s) {
  if (s == "-") return "";
  std::string out;
  for (size_t i = 0; i + 1 < s.size(); i += 2) out.push_back(char(std::stoi(s.substr(i, 2), nullptr, 16)));
  return out;
}

// ---------------------------------------------------------------- policy
struct Policy {
  long generation = 0;
  std::string experiment, salt;
  double default_share = 0.0;
  std::map<int64_t, double> domains;
  bool fallback = true;
  std::atomic<bool> aborted{false};

  bool IsCanary(int64_t domain, const std::string& user) const {
    auto found = domains.find(domain);
    double share = found == domains.end() ? default_share : found->second;
    if (share <= 0.0) return false;
    std::string key = experiment + '\x1f' + salt + '\x1f' + std::to_string(domain) + '\x1f' + user;
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_Digest(key.data(), key.size(), digest, &length, EVP_sha256(), nullptr);
    uint64_t top = 0;
    for (int i = 0; i < 8; ++i) top = (top << 8) | digest[i];
    return double(top) / 18446744073709551616.0 < share;
  }
};

std::shared_ptr<Policy> g_policy;  // replaced whole (std::atomic_load/store)
std::vector<std::string> g_tokens;

// ---------------------------------------------------------------- records
// The common request (no canary failure) is recorded here in full: its request metrics are summed
// per label set and sent as one delta line every kAggregateEvery, its exposure line (the same JSON
// the Python telemetry writes) goes straight to the exposure log, and a canary call sends only its
// outcome for the breaker. A request whose canary failed goes to the control plane whole, which
// logs and counts its fallback. Reading and counting one line per request cost the Python side
// about as much CPU as the whole compiled hop's routing work (serving/README.md).
constexpr auto kAggregateEvery = std::chrono::milliseconds(100);
constexpr const char* kStatusNames[] = {
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};

struct Telemetry {
  int exposure_fd = -1;                 // the exposure log (O_APPEND: the control plane appends too)
  bool hash_users = false;
  std::string user_hash_key;            // HMAC-SHA256 key: the exposure log then holds user_hash
  std::vector<double> latency_bounds;   // the control plane's histogram buckets, seconds
};
Telemetry g_telemetry;

struct Counts {
  uint64_t requests = 0;
  double seconds = 0.0;
  std::vector<uint64_t> buckets;  // per bucket, not cumulative; the last one is +Inf
};

// Bounded: past kMaxPendingBytes (the control plane or the disk not keeping up), a request waits
// for the writer rather than a record being dropped, as the Python router's telemetry queue does.
class RecordWriter {
 public:
  // One fast-path request: its counts under `labels`, its exposure line, its canary outcome line.
  void AddCounted(const std::string& labels, double seconds, std::string exposure, const std::string& canary) {
    const auto& bounds = g_telemetry.latency_bounds;
    size_t bucket = 0;
    while (bucket < bounds.size() && seconds > bounds[bucket]) ++bucket;
    std::unique_lock<std::mutex> lock(mutex_);
    WaitForRoom(&lock);
    Counts& counts = counts_[labels];
    if (counts.buckets.empty()) counts.buckets.assign(bounds.size() + 1, 0);
    counts.requests += 1;
    counts.seconds += seconds;
    counts.buckets[bucket] += 1;
    exposure_ += exposure;
    pending_ += canary;
    WakeIfIdle();
  }
  void Add(const std::string& line) {
    std::unique_lock<std::mutex> lock(mutex_);
    WaitForRoom(&lock);
    pending_ += line;
    WakeIfIdle();
  }
  // After every record so far (counts included, exposure lines written first): "sync TOKEN".
  void Sync(const std::string& token) {
    std::unique_lock<std::mutex> lock(mutex_);
    MoveCounts();
    pending_ += "sync " + token + "\n";
    WakeIfIdle();
  }
  void Start() { thread_ = std::thread([this] { Run(); }); }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      MoveCounts();
    }
    WriteOut();
  }

 private:
  // An idle writer sleeps until the next counts are due or a line arrives (one wake-up per batch,
  // none per request); a busy one writes every kWriteEvery.
  void WakeIfIdle() {
    if (idle_ && (!exposure_.empty() || !pending_.empty())) wake_.notify_one();
  }
  void WaitForRoom(std::unique_lock<std::mutex>* lock) {
    drained_.wait(*lock, [this] { return pending_.size() + exposure_.size() < kMaxPendingBytes || stop_; });
  }
  // m GEN METHOD DOMAIN ASSIGNED SERVED VERSION CODE REQUESTS SECONDS BUCKETS (comma-separated).
  void MoveCounts() {
    char number[48];
    for (const auto& [labels, counts] : counts_) {
      std::snprintf(number, sizeof(number), "\t%llu\t%.9g\t", static_cast<unsigned long long>(counts.requests),
                    counts.seconds);
      pending_ += "m\t" + labels + number;
      for (size_t i = 0; i < counts.buckets.size(); ++i) {
        if (i) pending_ += ',';
        pending_ += std::to_string(counts.buckets[i]);
      }
      pending_ += '\n';
    }
    counts_.clear();
  }
  void Run() {
    std::unique_lock<std::mutex> lock(mutex_);
    auto counted = std::chrono::steady_clock::now();
    while (!stop_) {
      if (pending_.empty() && exposure_.empty()) {
        idle_ = true;
        wake_.wait_until(lock, counted + kAggregateEvery,
                         [this] { return stop_ || !pending_.empty() || !exposure_.empty(); });
        idle_ = false;
        if (!pending_.empty() || !exposure_.empty()) wake_.wait_for(lock, kWriteEvery, [this] { return stop_; });
      } else {
        wake_.wait_for(lock, kWriteEvery, [this] { return stop_; });
      }
      if (std::chrono::steady_clock::now() - counted >= kAggregateEvery) {
        MoveCounts();
        counted = std::chrono::steady_clock::now();
      }
      lock.unlock();
      WriteOut();
      lock.lock();
    }
  }
  void WriteOut() {
    std::string batch, exposure;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      batch.swap(pending_);
      exposure.swap(exposure_);
    }
    drained_.notify_all();
    // Exposure lines first: once the control plane reads a sync marker, its lines are in the file.
    if (!WriteAll(g_telemetry.exposure_fd, exposure) && !exposure_failed_) {
      exposure_failed_ = true;  // said once per failing stretch; the control plane logs stderr
      std::cerr << "router data plane: cannot write the exposure log: " << std::strerror(errno) << std::endl;
    } else if (!exposure.empty()) {
      exposure_failed_ = false;
    }
    WriteAll(1, batch);  // false: the control plane is gone, nothing left to tell
  }
  static bool WriteAll(int fd, const std::string& data) {
    size_t written = 0;
    while (written < data.size()) {
      ssize_t n = write(fd, data.data() + written, data.size() - written);
      if (n <= 0) {
        if (n < 0 && errno == EINTR) continue;
        return false;
      }
      written += size_t(n);
    }
    return true;
  }
  std::mutex mutex_;
  std::condition_variable wake_, drained_;
  std::string pending_, exposure_;
  std::map<std::string, Counts> counts_;
  bool stop_ = false, idle_ = false, exposure_failed_ = false;
  std::thread thread_;
};

// ---------------------------------------------------------------- exposure lines
// As Python's json.dumps(record, separators=(",", ":"), sort_keys=True): ASCII only, \uXXXX for
// the rest (UTF-8 in: the data plane sends users that are not valid UTF-8 to the Python router).
void AppendJsonString(std::string* out, const std::string& s) {
  static const char digits[] = "0123456789abcdef";
  auto unicode = [&](uint32_t unit) {
    *out += "\\u";
    for (int shift = 12; shift >= 0; shift -= 4) out->push_back(digits[(unit >> shift) & 15]);
  };
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(char(c));
    } else if (c >= 0x20 && c < 0x7f) {
      out->push_back(char(c));
    } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' || c == '\f') {
      out->push_back('\\');
      out->push_back(c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : c == '\b' ? 'b' : 'f');
    } else if (c < 0x80) {
      unicode(c);
    } else {
      int extra = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
      uint32_t point = c & (0x3f >> extra);
      for (int k = 1; k <= extra && i + k < s.size(); ++k) point = (point << 6) | (s[i + k] & 0x3f);
      if (point >= 0x10000) {
        point -= 0x10000;
        unicode(0xd800 + (point >> 10));
        unicode(0xdc00 + (point & 0x3ff));
      } else {
        unicode(point);
      }
      i += size_t(extra);
    }
    ++i;
  }
  out->push_back('"');
}

// Python's repr of a float (shortest round-trip digits), for the magnitudes written here.
void AppendFloat(std::string* out, double value) {
  char text[64];
  auto end = std::to_chars(text, text + sizeof(text), value, std::chars_format::fixed).ptr;
  std::string_view written(text, size_t(end - text));
  *out += written;
  if (written.find('.') == std::string_view::npos) *out += ".0";
}

std::string UserHash(const std::string& user) {  // serving/router_security.py UserIdHasher
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  const std::string& key = g_telemetry.user_hash_key;
  HMAC(EVP_sha256(), key.data(), int(key.size()), reinterpret_cast<const unsigned char*>(user.data()), user.size(),
       digest, &length);
  return Hex(std::string(reinterpret_cast<const char*>(digest), 16));  // 128 bits, as the Python hasher
}

RecordWriter g_records;

// ---------------------------------------------------------------- the request path
struct Backends {
  std::unique_ptr<grpc::GenericStub> stable, canary, slow;
  double timeout_s = 10.0;
  std::string model_name;
  int max_concurrent = 512;
  std::atomic<int> in_flight{0};
};

bool IsCanaryFailure(const grpc::Status& status) {
  switch (status.error_code()) {
    case grpc::StatusCode::NOT_FOUND: case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::FAILED_PRECONDITION: case grpc::StatusCode::INTERNAL:
    case grpc::StatusCode::UNKNOWN: case grpc::StatusCode::DEADLINE_EXCEEDED:
    case grpc::StatusCode::CANCELLED:
      return true;
    case grpc::StatusCode::INVALID_ARGUMENT:
      return status.error_message().rfind(kUnknownLabel, 0) == 0;
    default:
      return false;
  }
}

bool ForwardableHeader(const std::string& key) {
  return !key.empty() && key[0] != ':' && key.rfind("grpc-", 0) != 0 && key != "user-agent" && key != "te" &&
         key != "content-type";
}

// 128 random bits, hex (as Python's uuid4().hex: unique, not secret): a generator per thread seeded
// from OpenSSL once, as RAND_bytes per request cost more than the rest of the request's own work.
std::string NewRequestId() {
  thread_local std::mt19937_64 generator = [] {
    uint64_t seed[2] = {0, 0};
    RAND_bytes(reinterpret_cast<unsigned char*>(seed), sizeof(seed));
    std::seed_seq sequence{uint32_t(seed[0]), uint32_t(seed[0] >> 32), uint32_t(seed[1]), uint32_t(seed[1] >> 32)};
    return std::mt19937_64(sequence);
  }();
  uint64_t bits[2] = {generator(), generator()};
  return Hex(std::string(reinterpret_cast<const char*>(bits), sizeof(bits)));
}

// Refuses new calls once the server is shutting down: a call may only be requested from a
// completion queue that is not shut down yet.
class CallRequests {
 public:
  template <typename Request>
  void IfOpen(Request request) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (open_) request();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = false;
  }

 private:
  std::mutex mutex_;
  bool open_ = true;
};

CallRequests g_call_requests;
grpc::AsyncGenericService g_service;

// One client call, driven by its completion-queue events (a tag per step, one step outstanding at
// a time): requested -> read -> backend (-> backend again on a fallback) -> finished. Each event
// thread polls its own queue for both the server side and the backend calls, so a request is
// handled start to end on one thread, with no hand-off between threads: on a small host gRPC's
// callback API spent a third more CPU per request, most of it switching threads.
class RouteCall {
 public:
  RouteCall(grpc::ServerCompletionQueue* queue, Backends* backends) : queue_(queue), backends_(backends) {
    g_service.RequestCall(&context_, &stream_, queue_, queue_, this);
  }
  static void Request(grpc::ServerCompletionQueue* queue, Backends* backends) {
    g_call_requests.IfOpen([&] { new RouteCall(queue, backends); });
  }

  void Proceed(bool ok) {
    switch (step_) {
      case kRequested: return Started(ok);
      case kRead: return Read(ok);
      case kBackend: return OnBackend();
      case kSlowPath: return OnSlowPath();
      case kFinished:
        if (counted_) backends_->in_flight.fetch_sub(1);
        delete this;
        return;
    }
  }

 private:
  enum Step { kRequested, kRead, kBackend, kSlowPath, kFinished };

  void Started(bool ok) {
    if (!ok) {  // the server is shutting down
      delete this;
      return;
    }
    Request(queue_, backends_);  // the next client's call
    started_ = std::chrono::steady_clock::now();
    counted_ = true;
    if (backends_->in_flight.fetch_add(1) >= backends_->max_concurrent) {
      return Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 "router: too many requests in flight (--max-concurrent-rpcs)"));
    }
    if (context_.method() == "/grpc.health.v1.Health/Watch") {
      return Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                                 "grpc.health.v1 Watch is not served by the native data plane; use Check"));
    }
    step_ = kRead;
    stream_.Read(&request_, this);
  }

  void Read(bool ok) {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::INTERNAL, "router: no request message"));
    const std::string& method = context_.method();
    std::string name = method.rfind(kService, 0) == 0 ? method.substr(sizeof(kService) - 1) : "";
    if ((name == "Predict" || name == "Regress") && Plan(name == "Predict")) {
      method_ = name;
      CallArm(assigned_canary_);
    } else {
      SlowPath();
    }
  }

  void Finish(const grpc::Status& status) {
    step_ = kFinished;
    stream_.Finish(status, this);
  }

  std::string Header(const char* key) const {
    auto found = context_.client_metadata().find(key);
    return found == context_.client_metadata().end() ? std::string()
                                                      : std::string(found->second.data(), found->second.size());
  }
  bool HasHeader(const char* key) const {
    return context_.client_metadata().find(key) != context_.client_metadata().end();
  }

  // Decides whether this request takes the fast path, and its arm.
  bool Plan(bool predict) {
    policy_ = std::atomic_load(&g_policy);
    if (!g_tokens.empty()) {
      std::string header = Header("authorization");
      if (header.rfind("Bearer ", 0) != 0) return false;
      std::string given = header.substr(7);
      size_t b = given.find_first_not_of(" \t"), e = given.find_last_not_of(" \t");
      given = b == std::string::npos ? "" : given.substr(b, e - b + 1);
      bool allowed = false;
      for (const auto& token : g_tokens)
        allowed |= token.size() == given.size() && CRYPTO_memcmp(token.data(), given.data(), given.size()) == 0;
      if (!allowed) return false;
    }
    body_ = Flatten(request_);
    Span body{reinterpret_cast<const uint8_t*>(body_.data()), body_.size()};
    Spec spec;
    if (!(predict ? ParsePredict(body, &spec, &key_) : ParseRegress(body, &spec, &key_))) return false;
    if (spec.name != backends_->model_name || spec.explicit_version) return false;
    if (!key_.has_domain && HasHeader("x-domain-id")) {
      std::string text = Header("x-domain-id");
      char* end = nullptr;
      errno = 0;
      long long value = std::strtoll(text.c_str(), &end, 10);
      if (text.empty() || *end != '\0' || errno != 0) return false;
      key_.has_domain = true;
      key_.domain = value;
    }
    if (!key_.has_user && HasHeader("x-user-id")) {
      key_.has_user = true;
      key_.user = Header("x-user-id");
    }
    if (!key_.has_domain || !key_.has_user) return false;
    request_id_ = Header("x-request-id");
    if (request_id_.empty()) request_id_ = NewRequestId();
    assigned_canary_ = !policy_->aborted.load() && policy_->IsCanary(key_.domain, key_.user);
    return true;
  }

  std::chrono::system_clock::time_point Deadline() const {
    auto own = std::chrono::system_clock::now() +
               std::chrono::microseconds(int64_t(backends_->timeout_s * 1e6));
    auto client = context_.deadline();
    return client < own ? client : own;
  }

  void CallArm(bool canary) {
    served_canary_ = canary;
    call_ = std::make_unique<grpc::ClientContext>();  // a fallback's call replaces the canary's, which is over
    call_->set_deadline(Deadline());
    call_->AddMetadata("x-request-id", request_id_);
    if (!canary) call_->set_wait_for_ready(true);
    static const std::string stable_override = LabelOverride("stable"), canary_override = LabelOverride("canary");
    const std::string& extra = canary ? canary_override : stable_override;
    grpc::Slice slices[2] = {grpc::Slice(body_.data(), body_.size(), grpc::Slice::STATIC_SLICE),
                             grpc::Slice(extra.data(), extra.size(), grpc::Slice::STATIC_SLICE)};
    forwarded_ = grpc::ByteBuffer(slices, 2);
    response_.Clear();
    call_started_ = std::chrono::steady_clock::now();
    grpc::GenericStub* stub = canary ? backends_->canary.get() : backends_->stable.get();
    step_ = kBackend;
    backend_ = stub->PrepareUnaryCall(call_.get(), context_.method(), forwarded_, queue_);
    backend_->StartCall();
    backend_->Finish(&response_, &backend_status_, this);
  }

  void OnBackend() {
    const grpc::Status& status = backend_status_;
    if (served_canary_) {
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - call_started_).count();
      bool failure = !status.ok() && IsCanaryFailure(status);
      if (status.ok() || failure) {
        canary_call_ = failure ? 1 : 0;
        canary_ms_ = ms;
      }
      if (failure && policy_->fallback) {
        fallback_ = true;
        canary_code_ = int(status.error_code());
        canary_details_ = status.error_message();
        CallArm(false);
        return;
      }
    }
    if (!status.ok()) return Answer(status);
    std::string response = Flatten(response_);
    if (!ResponseVersion(Span{reinterpret_cast<const uint8_t*>(response.data()), response.size()}, &version_)) {
      version_ = -1;
      return Answer(grpc::Status(grpc::StatusCode::INTERNAL, "router: the backend's response is not a valid " +
                                                                 method_ + "Response"));
    }
    context_.AddTrailingMetadata("x-crocodile-arm", served_canary_ ? "canary" : "stable");
    context_.AddTrailingMetadata("x-crocodile-version", std::to_string(version_));
    Answer(grpc::Status::OK);
  }

  void Answer(const grpc::Status& status) {
    Record(int(status.error_code()));
    Reply(status);
  }

  void Reply(const grpc::Status& status) {
    if (!status.ok()) return Finish(status);
    step_ = kFinished;
    stream_.WriteAndFinish(response_, grpc::WriteOptions(), status, this);
  }

  void Record(int code) {
    double latency_us =
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started_).count();
    double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    std::string version = version_ >= 0 && code == 0 ? std::to_string(version_) : std::string("-");
    if (canary_code_ >= 0) {  // the canary failed, stable answered: the control plane records it whole
      char head[160];
      std::snprintf(head, sizeof(head), "r\t%ld\t%.6f\t%.1f\t%c\t", policy_->generation, now, latency_us,
                    method_ == "Predict" ? 'P' : 'R');
      std::string line(head);
      line += Hex(request_id_) + '\t' + std::to_string(key_.domain) + '\t' + Hex(key_.user) + '\t';
      line += assigned_canary_ ? "C\t" : "S\t";
      line += served_canary_ ? "C\t" : "S\t";
      line += version + '\t' + (fallback_ ? "1\t" : "0\t");
      char tail[96];
      std::snprintf(tail, sizeof(tail), "%d\t%s\t%.3f\t%d\t", code, canary_call_ < 0 ? "-" : canary_call_ ? "1" : "0",
                    canary_ms_, canary_code_);
      line += tail;
      line += Hex(canary_details_) + '\n';
      g_records.Add(line);
      return;
    }
    const char* assigned = assigned_canary_ ? "canary" : "stable";
    const char* served = served_canary_ ? "canary" : "stable";
    std::string labels = std::to_string(policy_->generation) + (method_ == "Predict" ? "\tP\t" : "\tR\t") +
                         (policy_->domains.count(key_.domain) ? std::to_string(key_.domain) : std::string("other")) +
                         (assigned_canary_ ? "\tC" : "\tS") + (served_canary_ ? "\tC\t" : "\tS\t") + version + '\t' +
                         std::to_string(code);
    std::string exposure;
    if (g_telemetry.exposure_fd >= 0) {  // keys in sorted order, as the Python telemetry writes them
      exposure.reserve(320);
      exposure += std::string("{\"arm\":\"") + assigned + "\",\"assigned_arm\":\"" + assigned +
                  "\",\"domain\":" + std::to_string(key_.domain) + ",\"experiment\":";
      AppendJsonString(&exposure, policy_->experiment);
      exposure += ",\"fallback\":false,\"latency_ms\":";
      AppendFloat(&exposure, std::round(latency_us) / 1000.0);
      exposure += std::string(",\"method\":\"") + method_ + "\",\"request_id\":";
      AppendJsonString(&exposure, request_id_);
      exposure += std::string(",\"served_arm\":\"") + served + "\",\"status\":\"" + (code >= 0 && code <= 16 ? kStatusNames[code] : "UNKNOWN") +
                  "\",\"time\":";
      AppendFloat(&exposure, now);
      if (g_telemetry.hash_users) {
        exposure += ",\"user_hash\":\"" + UserHash(key_.user) + '"';
      } else {
        exposure += ",\"user\":";
        AppendJsonString(&exposure, key_.user);
      }
      exposure += ",\"version\":" + (version == "-" ? std::string("null") : version) + "}\n";
    }
    std::string canary;
    if (canary_call_ >= 0) {  // the breaker's observation: failed?, milliseconds
      char line[96];
      std::snprintf(line, sizeof(line), "o\t%ld\t%d\t%.3f\n", policy_->generation, canary_call_, canary_ms_);
      canary = line;
    }
    g_records.AddCounted(labels, latency_us / 1e6, std::move(exposure), canary);
  }

  // Unchanged to the Python router, with the client's metadata and deadline; its answer unchanged.
  void SlowPath() {
    call_ = std::make_unique<grpc::ClientContext>();
    call_->set_deadline(context_.deadline());
    call_->set_wait_for_ready(true);  // the control plane starts listening right after this process
    for (const auto& [key, value] : context_.client_metadata()) {
      std::string k(key.data(), key.size());
      if (ForwardableHeader(k)) call_->AddMetadata(k, std::string(value.data(), value.size()));
    }
    step_ = kSlowPath;
    backend_ = backends_->slow->PrepareUnaryCall(call_.get(), context_.method(), request_, queue_);
    backend_->StartCall();
    backend_->Finish(&response_, &backend_status_, this);
  }

  void OnSlowPath() {
    for (const auto& [key, value] : call_->GetServerTrailingMetadata())
      context_.AddTrailingMetadata(std::string(key.data(), key.size()), std::string(value.data(), value.size()));
    Reply(backend_status_);
  }

  grpc::ServerCompletionQueue* queue_;
  Backends* backends_;
  grpc::GenericServerContext context_;
  grpc::GenericServerAsyncReaderWriter stream_{&context_};
  Step step_ = kRequested;
  bool counted_ = false;
  std::chrono::steady_clock::time_point started_, call_started_;
  std::shared_ptr<Policy> policy_;
  std::unique_ptr<grpc::ClientContext> call_;
  std::unique_ptr<grpc::GenericClientAsyncResponseReader> backend_;
  grpc::Status backend_status_;
  grpc::ByteBuffer request_, forwarded_, response_;
  std::string body_, method_, request_id_;
  Key key_;
  bool assigned_canary_ = false, served_canary_ = false, fallback_ = false;
  int64_t version_ = -1;
  int canary_call_ = -1, canary_code_ = -1;
  double canary_ms_ = 0.0;
  std::string canary_details_;
};

// ---------------------------------------------------------------- set-up
struct Options {
  std::string host = "[::]", port = "0", stable, canary, slow_path, model_name = "crocodile";
  std::string tls_cert, tls_key, backend_ca, backend_server_name, exposure_log, user_hash_key_file;
  std::vector<double> latency_bounds;
  bool backend_tls = false;
  int max_message_bytes = 4 * 1024 * 1024, max_concurrent = 512, threads = 1;
  double timeout_s = 10.0, grace_s = 10.0;
};

[[noreturn]] void Die(const std::string& message) {
  std::cerr << "router data plane: " << message << std::endl;
  std::exit(2);
}

std::string ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Die(std::string("cannot read ") + what + " " + path);
  std::stringstream data;
  data << in.rdbuf();
  return data.str();
}

Options ParseOptions(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--backend-tls") {
      o.backend_tls = true;
      continue;
    }
    if (i + 1 >= argc) Die("flag " + flag + " needs a value");
    std::string value = argv[++i];
    if (flag == "--host") o.host = value;
    else if (flag == "--port") o.port = value;
    else if (flag == "--stable") o.stable = value;
    else if (flag == "--canary") o.canary = value;
    else if (flag == "--slow-path") o.slow_path = value;
    else if (flag == "--model-name") o.model_name = value;
    else if (flag == "--tls-cert") o.tls_cert = value;
    else if (flag == "--tls-key") o.tls_key = value;
    else if (flag == "--backend-tls-ca") o.backend_ca = value;
    else if (flag == "--backend-tls-server-name") o.backend_server_name = value;
    else if (flag == "--max-message-bytes") o.max_message_bytes = std::stoi(value);
    else if (flag == "--max-concurrent-rpcs") o.max_concurrent = std::stoi(value);
    else if (flag == "--threads") o.threads = std::max(1, std::stoi(value));
    else if (flag == "--backend-timeout-s") o.timeout_s = std::stod(value);
    else if (flag == "--grace-s") o.grace_s = std::stod(value);
    else if (flag == "--exposure-log") o.exposure_log = value;
    else if (flag == "--user-hash-key-file") o.user_hash_key_file = value;
    else if (flag == "--latency-buckets") {
      std::stringstream bounds(value);
      for (std::string bound; std::getline(bounds, bound, ',');) o.latency_bounds.push_back(std::stod(bound));
    }
    else Die("unknown flag " + flag);
  }
  if (o.stable.empty() || o.slow_path.empty()) Die("--stable and --slow-path are required");
  if (o.canary.empty()) o.canary = o.stable;
  return o;
}

std::shared_ptr<grpc::Channel> Channel(const Options& o, const std::string& target, bool backend) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_message_bytes);
  args.SetMaxSendMessageSize(o.max_message_bytes);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  if (!backend || !o.backend_tls) return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  grpc::SslCredentialsOptions ssl;
  if (!o.backend_ca.empty()) ssl.pem_root_certs = ReadFile(o.backend_ca, "--backend-tls-ca");
  if (!o.backend_server_name.empty()) args.SetSslTargetNameOverride(o.backend_server_name);
  return grpc::CreateCustomChannel(target, grpc::SslCredentials(ssl), args);
}

std::vector<std::string> Split(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  std::string word;
  while (in >> word) words.push_back(word);
  return words;
}

// Applies one control line; false for an unknown or malformed one (said on stderr, ignored).
bool Control(const std::string& line) {
  std::vector<std::string> w = Split(line);
  if (w.empty()) return true;
  try {
    if (w[0] == "policy" && w.size() >= 7) {
      auto policy = std::make_shared<Policy>();
      policy->generation = std::stol(w[1]);
      policy->experiment = Unhex(w[2]);
      policy->salt = Unhex(w[3]);
      policy->default_share = std::stod(w[4]);
      policy->fallback = w[5] == "fallback";
      size_t n = std::stoul(w[6]);
      if (w.size() != 7 + 2 * n) throw std::invalid_argument("domain count");
      for (size_t i = 0; i < n; ++i) policy->domains[std::stoll(w[7 + 2 * i])] = std::stod(w[8 + 2 * i]);
      std::atomic_store(&g_policy, policy);
      return true;
    }
    if (w[0] == "abort" && w.size() == 2) {
      auto policy = std::atomic_load(&g_policy);
      if (policy && policy->generation == std::stol(w[1])) policy->aborted.store(true);
      return true;
    }
    if (w[0] == "sync" && w.size() == 2) {  // a marker after every record made so far
      g_records.Sync(w[1]);
      return true;
    }
    if (w[0] == "tokens" && w.size() >= 2 && w.size() == 2 + std::stoul(w[1])) {
      g_tokens.clear();
      for (size_t i = 2; i < w.size(); ++i) g_tokens.push_back(Unhex(w[i]));
      return true;
    }
  } catch (const std::exception&) {
  }
  std::cerr << "router data plane: ignored control line: " << line << std::endl;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  // Stopping is the control plane's call (it closes stdin): a terminal's Ctrl-C or a SIGTERM to the
  // whole process group must not cut the requests in flight short.
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  signal(SIGPIPE, SIG_IGN);
  Options o = ParseOptions(argc, argv);
  std::string line;
  while (std::getline(std::cin, line) && line != "start") Control(line);
  if (!std::atomic_load(&g_policy)) Die("no policy given before 'start'");

  if (!o.exposure_log.empty()) {
    g_telemetry.exposure_fd = open(o.exposure_log.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (g_telemetry.exposure_fd < 0) Die("cannot open the exposure log " + o.exposure_log + ": " + std::strerror(errno));
  }
  if (!o.user_hash_key_file.empty()) {
    g_telemetry.hash_users = true;
    g_telemetry.user_hash_key = ReadFile(o.user_hash_key_file, "--user-hash-key-file");
  }
  g_telemetry.latency_bounds = o.latency_bounds;
  Backends backends;
  backends.stable = std::make_unique<grpc::GenericStub>(Channel(o, o.stable, true));
  backends.canary = std::make_unique<grpc::GenericStub>(Channel(o, o.canary, true));
  backends.slow = std::make_unique<grpc::GenericStub>(Channel(o, o.slow_path, false));
  backends.timeout_s = o.timeout_s;
  backends.model_name = o.model_name;
  backends.max_concurrent = o.max_concurrent;

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!o.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({ReadFile(o.tls_key, "--tls-key"), ReadFile(o.tls_cert, "--tls-cert")});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(o.host + ":" + o.port, credentials, &port);
  builder.SetMaxReceiveMessageSize(o.max_message_bytes);
  builder.SetMaxSendMessageSize(o.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);  // a second router on the port is an error
  builder.RegisterAsyncGenericService(&g_service);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> queues;
  for (int i = 0; i < o.threads; ++i) queues.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) Die("cannot listen on port " + o.port);
  std::vector<std::thread> event_threads;
  for (auto& queue : queues) {
    event_threads.emplace_back([queue = queue.get(), &backends] {
      for (int i = 0; i < kCallsWaiting; ++i) RouteCall::Request(queue, &backends);
      void* tag;
      bool ok;
      while (queue->Next(&tag, &ok)) static_cast<RouteCall*>(tag)->Proceed(ok);
    });
  }
  std::string ready = "ready " + std::to_string(port) + "\n";
  if (write(1, ready.data(), ready.size()) != ssize_t(ready.size())) Die("cannot write to stdout");
  g_records.Start();

  while (std::getline(std::cin, line)) Control(line);
  // stdin closed: the control plane is stopping. Refuse new calls, answer in-flight ones (cancelled
  // after the grace period); then, with no call left, stop the event threads.
  server->Shutdown(std::chrono::system_clock::now() +
                   std::chrono::microseconds(int64_t(o.grace_s * 1e6)));
  while (backends.in_flight.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  g_call_requests.Close();
  for (auto& queue : queues) queue->Shutdown();
  for (auto& thread : event_threads) thread.join();
  g_records.Stop();
  return 0;
}
