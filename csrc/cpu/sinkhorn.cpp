// CPU kernels of seer_kernels::sinkhorn, sinkhorn_colstats and sinkhorn_codes.
//
// Algorithm (the same in every backend; see seer_kernels/ops/sinkhorn.py), fp32
// accumulation whatever the input dtype, L = scores / eps, per-prototype log_u (K,):
//   pass 0      log_u = -logsumexp_b L[:, k] - log K
//   pass t      log_u += log(B/K) - logsumexp_b log_softmax_k(L + log_u)[:, k]   (t < T)
//   last pass   codes = softmax_k(L + log_u)
//   T = 0       codes = B * exp(L - logsumexp(L))
//
// The fused op with T >= 1 runs in the exp domain. The rows are cut into chunks (below);
// pass 0 stores E = exp(L - m) in the codes buffer, m the chunk's per-column max of L, so
// every entry of E is in [0, 1] and each chunk column holds a 1. With the per-chunk
// weights g_k = exp(m_k + log_u_k - G) (G: the chunk's largest m_k + log_u_k, a constant
// per row that cancels in its softmax), row b's softmax is P[b, k] = E[b, k] g_k / r_b,
// r_b = sum_k E[b, k] g_k. So pass t is a row sum and a column sum of E scaled by g and
// 1 / r_b, and the last pass writes P over E in place: one exp per element in all
// (pass 0) instead of one per element per pass, and K per chunk per pass for g. The
// entries of E or E * g that flush to 0 or fall into the denormals are off by at most
// ~2^-148 each; a row keeps the exp domain only while r_b >= K * 2^-100, so together they
// move r_b by at most 2^-48 of itself and its codes by at most 2^-48 / K (and, summed over
// B rows, the column sums, each >= 1/K (below), by B * 2^-48 of themselves). A row below
// that (every entry of its E far under its column's max, e.g. at eps 0.01) takes its
// softmax from its scores in the log domain, exactly; a crop whose pass-0 column
// logsumexps are not all finite (NaN or inf input) runs its remaining passes in the log
// domain, so non-finite input gives the reference's NaNs (below).
//
// Bytes moved, (B, K) scores of s bytes each (4 fp32, 2 bf16/fp16), T >= 1 iterations:
//   pass 0          B*K*s read twice per chunk (the second from cache: a chunk is at
//                   most 256 rows, 3 MB at K = 3000) + B*K*4 written (E, streamed)
//   each pass t     B*K*4 read (E; the column sums: K floats per chunk)
//   last pass       B*K*4 read + B*K*4 written (the codes, over E)
//   total           B*K*(s + 4 + 4*(T - 1) + 8) = B*K*(s + 4T + 8), against the
//                   log-domain floor (T + 1)*B*K*s + 4*B*K, which recomputes every exp
//                   each pass. (4096, 3000, 3) fp32: 295 MB here, 246 MB at that floor.
// The log-domain passes (T = 0, the building-block ops, non-finite crops) move
// (T + 1)*B*K*s + 4*B*K with one exp per element per pass.
//
// Parallel layout: the rows of each crop are cut into chunks that depend on B only (not
// on the thread count, so results are bit-identical for any number of threads); the
// threads claim chunks one at a time (parallel_claim), each chunk accumulates private
// per-column statistics, and the chunks are merged in a fixed order (max of shifts,
// rescaled sums; threaded over columns only when that is big). One parallel region per
// pass: T + 1 per call at SEER sizes.
//
// Column logsumexps. Pass 0 shifts by the per-column max, so nothing over- or underflows
// for any finite input at any eps. Passes t >= 1 sum softmax entries directly, with
// shift 0: an entry is in [0, 1], so no sum overflows, and none of the sums that matter
// underflows. After pass 0 (or an update), A = exp(L + log_u) has column sums 1/K (or
// B/K) and hence row sums r_b <= 1 (or B); the row-softmax is A[b, k] / r_b >= A[b, k]
// (or A[b, k] / B), so every column of it sums to >= 1/K and its largest entry is
// >= 1/(K*B), ~1e-11 for SEER sizes, while only entries below 1e-38 flush to zero.
//
// Non-finite input follows the reference: a NaN poisons its column statistic, hence
// log_u, hence every row (all codes NaN); +inf gives NaN where inf - inf appears.
#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "../op_checks.h"
#include "../sinkhorn_merge.h"
#include "isa.h"
#include "sinkhorn_kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace seer_kernels::cpu::sinkhorn {
namespace {

// Codes are a fresh (B, K) fp32 tensor per call, tens to hundreds of MB: above glibc's
// mmap threshold (at most 32 MiB), so a plain allocation is a fresh mapping every call,
// and the kernel zeroes every page on its first touch. Measured on a 2-core VM at
// (4096, 3000), 49 MB: 12288 faults and 24-107 ms with 4 KiB pages; 24 faults but still
// 14-20 ms (the zeroing, at ~3 GB/s) with transparent huge pages, against ~10 ms per pass.
// So the allocator (1) asks for 2 MiB pages (madvise, as c10 does under
// THP_MEM_ALLOC_ENABLE=1) and (2) keeps the one most recently freed block of up to
// kMaxCachedBytes for the next request of the same size: in a training loop each step's
// codes are freed before the next step asks for them, and the reused block costs neither
// faults nor zeroing. At most one freed block is held (the newest; a bigger one is
// returned to the system at once). Outputs below 4 MiB use the default CPU allocator.
class CodesAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kPage = size_t(2) << 20;
  static constexpr size_t kMaxCachedBytes = size_t(256) << 20;

  // Never destroyed: codes tensors may be freed after static destructors have run.
  static CodesAllocator& instance() {
    static auto* allocator = new CodesAllocator();
    return *allocator;
  }

  c10::DataPtr allocate(size_t bytes) override {
    const size_t size = std::max(kPage, (bytes + kPage - 1) / kPage * kPage);
    void* ptr = take_cached(size);
    if (ptr == nullptr) {
      TORCH_CHECK(posix_memalign(&ptr, kPage, size) == 0, "sinkhorn: out of memory allocating ",
                  size, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(ptr, size, MADV_HUGEPAGE);  // advisory: without THP it is plain memory
#endif
    }
    return {ptr, new Block{ptr, size}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  struct Block {
    void* ptr;
    size_t size;
  };

  void* take_cached(size_t size) {
    const std::lock_guard<std::mutex> lock(mutex_);
    if (cached_.ptr == nullptr || cached_.size != size) return nullptr;
    return std::exchange(cached_.ptr, nullptr);
  }

  // The freed block becomes the cached one; the one it displaces goes back to the system.
  static void release(void* context) {
    const std::unique_ptr<Block> block(static_cast<Block*>(context));
    void* to_free = block->ptr;
    if (block->size <= kMaxCachedBytes) {
      CodesAllocator& self = instance();
      const std::lock_guard<std::mutex> lock(self.mutex_);
      to_free = std::exchange(self.cached_, *block).ptr;
    }
    std::free(to_free);  // free(nullptr) is a no-op
  }

  std::mutex mutex_;
  Block cached_{nullptr, 0};
};

at::Tensor empty_codes(int64_t rows, int64_t cols) {
  if (rows * cols * int64_t(sizeof(float)) < (int64_t(4) << 20)) {
    return at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat));
  }
  return at::detail::empty_generic({rows, cols}, &CodesAllocator::instance(),
                                   c10::DispatchKeySet(c10::DispatchKey::CPU), at::kFloat,
                                   std::nullopt);
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The instruction-set table of this process (isa.h).
const Kernels& kernels() {
  static const Kernels& table = select_kernels(&kernels_avx512, &kernels_avx2, &kernels_default);
  return table;
}

// The scores' dtype as the kernels name it; check_sinkhorn_scores (op_checks.h) has
// rejected every other dtype.
InputType input_type(const at::Tensor& scores) {
  switch (scores.scalar_type()) {
    case at::kHalf:
      return InputType::kHalf;
    case at::kBFloat16:
      return InputType::kBFloat16;
    default:
      return InputType::kFloat;
  }
}

// The op-level contract (op_checks.h) on a CPU tensor.
void check_scores(const at::Tensor& scores, double epsilon) {
  check_sinkhorn_scores(scores, epsilon, /*takes_crops=*/true);
  TORCH_CHECK(scores.device().is_cpu(), "sinkhorn: scores must be a CPU tensor, got ",
              scores.device());
}

// Rows per chunk: a function of B only, about 16 chunks (256 rows each beyond 4096 rows)
// so two to sixteen threads get balanced work; a multiple of the 8-row block.
int64_t rows_per_chunk(int64_t rows) {
  const int64_t target = std::max<int64_t>(16, ceil_div(rows, 256));
  return std::max<int64_t>(1, ceil_div(ceil_div(rows, target), kBlockRows)) * kBlockRows;
}

// The scores of A crops (contiguous; one crop for (B, K) scores), each crop's padded fp32
// log_u (padding lanes 0) and one Problem per crop, all outliving the passes. A crop's
// codes are rows [a * B, (a + 1) * B) of the (A * B, K) output.
struct Crops {
  at::Tensor scores;
  int64_t count;
  int64_t rows;
  int64_t cols;
  int64_t padded;
  std::vector<float> log_u;
  std::vector<Problem> problems;

  Crops(const at::Tensor& s, double epsilon, const Kernels& k)
      : scores(s.contiguous()),
        count(s.dim() == 3 ? s.size(0) : 1),
        rows(s.size(-2)),
        cols(s.size(-1)),
        padded(ceil_div(cols, k.width) * k.width),
        log_u(count * padded, 0.f) {
    const auto* base = static_cast<const char*>(scores.data_ptr());
    const int64_t stride = rows * cols * int64_t(scores.element_size());
    for (int64_t a = 0; a < count; ++a) {
      problems.push_back(Problem{base + a * stride, input_type(scores), rows, cols, padded,
                                 float(epsilon), log_u.data() + a * padded});
    }
  }
  float* log_u_of(int64_t a) { return log_u.data() + a * padded; }
  float* codes_of(float* out, int64_t a) const { return out + a * rows * cols; }
};

// The row chunks of every crop: tasks are (crop, chunk) pairs, crop-major, so the threads
// share the crops' chunks (two crops of a few hundred rows keep two threads busy) and a
// chunk's result never depends on the other crops or on the thread count.
struct Chunks {
  int64_t per;    // rows per chunk (rows_per_chunk)
  int64_t count;  // chunks per crop
  int64_t slots;  // statistics slots per crop: max(count, 1)
  int64_t rows;   // B

  explicit Chunks(int64_t b)
      : per(rows_per_chunk(b)),
        count(ceil_div(b, per)),
        slots(std::max<int64_t>(count, 1)),
        rows(b) {}
  int64_t first_row(int64_t c) const { return c * per; }
  int64_t rows_in(int64_t c) const { return std::min(per, rows - c * per); }
};

// Row buffers, one per thread, allocated before the parallel region: a heap buffer
// freed inside each task made glibc trim and re-fault the thread's arena on every pass
// (measured: 35 mmap/munmap calls per call, and 4-8 ms passes with two threads).
at::Tensor thread_scratch(int64_t floats_per_thread) {
  return at::empty({at::get_num_threads(), std::max<int64_t>(floats_per_thread, 1)},
                   at::TensorOptions().dtype(at::kFloat));
}

// Runs task(index, thread) for every index in [0, count): one parallel region in which
// each thread claims the next index until none is left. at::parallel_for alone splits
// the range into one fixed run per thread, so when the machine is busy and one thread is
// descheduled, the other finishes its run and waits at the join for the whole of the
// sleeper's (measured: a 2-thread pass 2-3x a 1-thread one); claiming one index at a
// time bounds that wait by one task. Which thread runs a task never changes its result.
template <typename Task>
void parallel_claim(int64_t count, const Task& task) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    const int thread = at::get_thread_num();
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < count;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      task(i, thread);
    }
  });
}

// Per-chunk (2, Kp) column statistics of `crops` crops: (crops, slots, 2, Kp), zeros in
// the one slot of a crop without rows.
at::Tensor chunk_stats(int64_t crops, const Chunks& ch, int64_t padded) {
  at::Tensor partial =
      at::empty({crops, ch.slots, 2, padded}, at::TensorOptions().dtype(at::kFloat));
  if (ch.count == 0) partial.zero_();
  return partial;
}

// Each crop's chunk statistics merged, in chunk order: (crops, 2, Kp) fp32
// [shift; sum of exp(x - shift)].
at::Tensor merge_chunks(const at::Tensor& partial, int64_t padded, const Kernels& k) {
  const int64_t crops = partial.size(0);
  const int64_t slots = partial.size(1);
  const float* part = partial.data_ptr<float>();
  at::Tensor merged = at::empty({crops, 2, padded}, at::TensorOptions().dtype(at::kFloat));
  float* out = merged.data_ptr<float>();
  // The merge reads slots * 2 * Kp floats per crop (~1% of a pass): threads only when it
  // is big, since every parallel region is a barrier, and barriers are what a busy
  // machine makes slow.
  const int64_t vectors = padded / k.width;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (k.width * slots));
  at::parallel_for(0, crops * vectors, grain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1;) {
      const int64_t a = i / vectors;
      const int64_t v0 = i % vectors;
      const int64_t v1 = std::min(vectors, v0 + (i1 - i));
      k.merge_stats(part + a * slots * 2 * padded, slots, padded, v0 * k.width, v1 * k.width,
                    out + a * 2 * padded);
      i += v1 - v0;
    }
  });
  return merged;
}

// Column statistics of crops [first, first + n) over all their rows, merged:
// (n, 2, Kp) fp32 [shift; sum of exp(x - shift)].
at::Tensor colstats_padded(const Crops& cr, int64_t first, int64_t n, bool normalize_rows,
                           const Kernels& k) {
  const Chunks ch(cr.rows);
  at::Tensor partial = chunk_stats(n, ch, cr.padded);
  float* part = partial.data_ptr<float>();
  const int64_t scratch_size = kBlockRows * cr.padded;
  at::Tensor scratch = thread_scratch(scratch_size);
  float* buffers = scratch.data_ptr<float>();
  parallel_claim(n * ch.count, [&](int64_t i, int thread) {
    const int64_t a = i / ch.count;
    const int64_t c = i % ch.count;
    k.colstats_rows(cr.problems[first + a], ch.first_row(c), ch.rows_in(c), normalize_rows,
                    buffers + thread * scratch_size, part + (a * ch.slots + c) * 2 * cr.padded);
  });
  return merge_chunks(partial, cr.padded, k);
}

// The codes of crops [first, first + n) into out ((A * B, K) fp32), in the log domain.
void codes(const Crops& cr, int64_t first, int64_t n, bool normalize_rows, const Kernels& k,
           float scale, float* out) {
  // Tasks of ~1 MiB of scores (at least 8 rows): ~50 of them at (4096, 3000), so a
  // descheduled thread holds up at most a fiftieth of the pass.
  const int64_t per = std::max<int64_t>(8, (int64_t(1) << 18) / std::max<int64_t>(cr.padded, 1));
  const int64_t tasks = ceil_div(cr.rows, per);
  at::Tensor scratch = thread_scratch(cr.padded);
  float* buffers = scratch.data_ptr<float>();
  parallel_claim(n * tasks, [&](int64_t i, int thread) {
    const int64_t a = first + i / tasks;
    const int64_t r0 = (i % tasks) * per;
    k.codes_rows(cr.problems[a], r0, std::min(per, cr.rows - r0), normalize_rows, scale,
                 buffers + thread * cr.padded, cr.codes_of(out, a));
  });
}

// logsumexp over the column of its (shift, sum), as the reference: shift + log(sum).
float column_lse(const float* merged, int64_t padded, int64_t col) {
  return merged[col] + std::log(merged[padded + col]);
}

// Crop a's log_u[c] = sinkhorn_log_u(mode, lse_c, log_u[c], log_b, log_k) for every column
// c, lse_c its logsumexp from the crop's merged statistics st (2, Kp); whether every lse_c
// is finite.
bool update_log_u(Crops& cr, int64_t a, SinkhornMerge mode, const float* st, float log_b,
                  float log_k) {
  float* log_u = cr.log_u_of(a);
  bool finite = true;
  for (int64_t c = 0; c < cr.cols; ++c) {
    const float lse = column_lse(st, cr.padded, c);
    finite = finite && std::isfinite(lse);
    log_u[c] = sinkhorn_log_u(mode, lse, log_u[c], log_b, log_k);
  }
  return finite;
}

// A fresh fp32 output of the scores' shape: (B, K), or (A, B, K) for crops.
at::Tensor empty_output(const Crops& cr) {
  return empty_codes(cr.count * cr.rows, cr.cols).view(cr.scores.sizes());
}

void set_log_u(Crops& cr, const at::Tensor& log_u) {
  check_sinkhorn_log_u(log_u, cr.scores);
  TORCH_CHECK(log_u.device().is_cpu(), "sinkhorn: log_u must be a CPU tensor, got ",
              log_u.device());
  const at::Tensor lu = log_u.to(at::kFloat).contiguous();
  for (int64_t a = 0; a < cr.count; ++a) {
    const float* src = lu.data_ptr<float>() + a * cr.cols;
    std::copy(src, src + cr.cols, cr.log_u_of(a));
  }
}

at::Tensor sinkhorn_colstats_cpu(const at::Tensor& scores, const at::Tensor& log_u, double epsilon,
                                 bool normalize_rows) {
  check_scores(scores, epsilon);
  const Kernels& k = kernels();
  Crops cr(scores, epsilon, k);
  set_log_u(cr, log_u);
  const at::Tensor stats =
      colstats_padded(cr, 0, cr.count, normalize_rows, k).narrow(2, 0, cr.cols).contiguous();
  return scores.dim() == 3 ? stats : stats.squeeze(0);
}

at::Tensor sinkhorn_codes_cpu(const at::Tensor& scores, const at::Tensor& log_u, double epsilon,
                              bool normalize_rows) {
  check_scores(scores, epsilon);
  const Kernels& k = kernels();
  Crops cr(scores, epsilon, k);
  set_log_u(cr, log_u);
  at::Tensor out = empty_output(cr);
  codes(cr, 0, cr.count, normalize_rows, k, 1.f, out.data_ptr<float>());
  return out;
}

// iterations >= 1 in the exp domain (see the top of this file), every crop's passes in
// one parallel region each; a crop whose pass-0 column logsumexps are not all finite (NaN
// or inf input) finishes in the log domain instead, on its own.
void sinkhorn_exp_domain(Crops& cr, int64_t iterations, const Kernels& k, float* out) {
  const int64_t cols = cr.cols;
  const int64_t padded = cr.padded;
  // fp32 constants, formed as the reference forms them: log_b = the fp32 log of the fp32 row
  // count (torch.log(b_total)), log_k = the double log K rounded to fp32 (math.log(k)
  // subtracted from an fp32 tensor). log_b may differ from the reference's in the last bit:
  // torch.log's CPU kernel and std::log do not always round alike (B = 7: one ulp apart).
  const float log_b = std::log(float(cr.rows));
  const float log_k = float(std::log(double(cols)));
  const Chunks ch(cr.rows);
  at::Tensor partial = chunk_stats(cr.count, ch, padded);
  float* part = partial.data_ptr<float>();
  const auto slot = [&](int64_t a, int64_t c) { return part + (a * ch.slots + c) * 2 * padded; };
  at::Tensor scratch = thread_scratch(3 * padded);
  float* buffers = scratch.data_ptr<float>();
  const int64_t tasks = cr.count * ch.count;
  parallel_claim(tasks, [&](int64_t i, int thread) {
    const int64_t a = i / ch.count;
    const int64_t c = i % ch.count;
    k.exp_first_rows(cr.problems[a], ch.first_row(c), ch.rows_in(c), buffers + thread * 3 * padded,
                     cr.codes_of(out, a), slot(a, c));
  });
  std::vector<char> finite(cr.count, 1);
  {
    const at::Tensor stats = merge_chunks(partial, padded, k);
    for (int64_t a = 0; a < cr.count; ++a) {
      finite[a] = update_log_u(cr, a, SinkhornMerge::kFirst,
                               stats.data_ptr<float>() + a * 2 * padded, log_b, log_k);
    }
  }
  // Rows whose r_b falls below K * 2^-100 take the log-domain path: elsewhere each of the
  // K products E * g that flushes or lands in the denormals is off by at most ~2^-148,
  // together at most 2^-48 of r_b (see the top of this file).
  const float min_row_sum = std::ldexp(float(cols), -100);
  std::vector<float> total(padded);
  for (int64_t t = 0; t < iterations; ++t) {
    const bool last = t == iterations - 1;
    parallel_claim(tasks, [&](int64_t i, int thread) {
      const int64_t a = i / ch.count;
      const int64_t c = i % ch.count;
      if (!finite[a]) return;
      k.exp_pass_rows(cr.problems[a], slot(a, c), ch.first_row(c), ch.rows_in(c), last, min_row_sum,
                      buffers + thread * 3 * padded, cr.codes_of(out, a), slot(a, c) + padded);
    });
    if (last) break;
    for (int64_t a = 0; a < cr.count; ++a) {
      if (!finite[a]) continue;
      std::fill(total.begin(), total.end(), 0.f);
      for (int64_t c = 0; c < ch.count; ++c) {
        const float* sum = slot(a, c) + padded;
        for (int64_t j = 0; j < cols; ++j) total[j] += sum[j];
      }
      float* log_u = cr.log_u_of(a);
      for (int64_t j = 0; j < cols; ++j) {
        log_u[j] =
            sinkhorn_log_u(SinkhornMerge::kUpdate, std::log(total[j]), log_u[j], log_b, log_k);
      }
    }
  }
  if (std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; })) return;
  partial = at::Tensor();  // the log-domain passes allocate their own statistics
  scratch = at::Tensor();
  for (int64_t a = 0; a < cr.count; ++a) {
    if (finite[a]) continue;
    for (int64_t t = 1; t < iterations; ++t) {
      const at::Tensor stats = colstats_padded(cr, a, 1, /*normalize_rows=*/true, k);
      update_log_u(cr, a, SinkhornMerge::kUpdate, stats.data_ptr<float>(), log_b, log_k);
    }
    codes(cr, a, 1, /*normalize_rows=*/true, k, 1.f, out);
  }
}

// iterations = 0: codes = B * exp(L - total) per crop, total = the logsumexp of the column
// logsumexps (in fp64). Scaling by B after the exp (not adding log B inside it) keeps the
// exponent's rounding that of L - total alone, as in the reference.
void sinkhorn_total_normalization(Crops& cr, const Kernels& k, float* out) {
  const at::Tensor stats = colstats_padded(cr, 0, cr.count, /*normalize_rows=*/false, k);
  for (int64_t a = 0; a < cr.count; ++a) {
    const float* st = stats.data_ptr<float>() + a * 2 * cr.padded;
    float total_max = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < cr.cols; ++c) {
      const float v = column_lse(st, cr.padded, c);
      total_max = std::isnan(v) || std::isnan(total_max) ? std::numeric_limits<float>::quiet_NaN()
                                                         : std::max(total_max, v);
    }
    const double safe = std::isfinite(total_max) ? total_max : 0.0;
    double acc = 0.0;
    for (int64_t c = 0; c < cr.cols; ++c) {
      acc += std::exp(double(column_lse(st, cr.padded, c)) - safe);
    }
    std::fill(cr.log_u_of(a), cr.log_u_of(a) + cr.cols, float(-(safe + std::log(acc))));
  }
  codes(cr, 0, cr.count, /*normalize_rows=*/false, k, float(cr.rows), out);
}

// The fused op: T + 1 passes over the scores of every crop, log_u updated in between, no
// Python.
at::Tensor sinkhorn_cpu(const at::Tensor& scores, double epsilon, int64_t iterations) {
  check_scores(scores, epsilon);
  check_sinkhorn_iterations(iterations);
  const Kernels& k = kernels();
  Crops cr(scores, epsilon, k);
  at::Tensor out = empty_output(cr);
  if (iterations > 0) {
    sinkhorn_exp_domain(cr, iterations, k, out.data_ptr<float>());
  } else {
    sinkhorn_total_normalization(cr, k, out.data_ptr<float>());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(seer_kernels, CPU, m) {
  m.impl("sinkhorn", &sinkhorn_cpu);
  m.impl("sinkhorn_colstats", &sinkhorn_colstats_cpu);
  m.impl("sinkhorn_codes", &sinkhorn_codes_cpu);
}

}  // namespace seer_kernels::cpu::sinkhorn
