// C++ tests of the operators through the dispatcher, without Python: the schemas are
// registered, and every op with a CPU kernel computes what its definition says.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what.c_str());
  if (!ok) ++failures;
}

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

bool has_cpu_kernel(const char* name) {
  return op(name).hasKernelForDispatchKey(c10::DispatchKey::CPU);
}

// Log-domain SwAV Sinkhorn in double: the same definition as seer_kernels.reference.
at::Tensor sinkhorn_ref(const at::Tensor& scores, double eps, int64_t iters) {
  auto l = scores.to(at::kDouble) / eps;
  const double k = static_cast<double>(l.size(1));
  const double b = static_cast<double>(l.size(0));
  if (iters == 0) return at::exp(l - at::logsumexp(l.flatten(), 0) + std::log(b));
  auto log_u = -at::logsumexp(l, 0) - std::log(k);
  for (int64_t t = 1; t < iters; ++t) {
    auto log_p = at::log_softmax(l + log_u, 1);
    log_u = log_u + std::log(b / k) - at::logsumexp(log_p, 0);
  }
  return at::softmax(l + log_u, 1);
}

// Every operator csrc/ops.cpp defines in the seer_kernels namespace, as the dispatcher
// holds them (sorted): the list is read, not written here, so a new op cannot be missed.
// The *_triton ops are registered from Python only and never appear in this process.
std::vector<std::string> registered_ops() {
  std::vector<std::string> names;
  for (const c10::OperatorName& name : c10::Dispatcher::singleton().getAllOpNames()) {
    if (name.name.rfind("seer_kernels::", 0) == 0 && name.overload_name.empty()) {
      names.push_back(name.name);
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

// Each registered op has its schema and a CPU kernel (every op ships one).
void test_schemas() {
  const std::vector<std::string> names = registered_ops();
  check(!names.empty(), "seer_kernels ops registered: " + std::to_string(names.size()));
  for (const std::string& name : names) {
    bool found = c10::Dispatcher::singleton().findSchema({name, ""}).has_value();
    check(found, "schema registered: " + name);
    check(found && has_cpu_kernel(name.c_str()), "CPU kernel registered: " + name);
  }
}

double max_abs_diff(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(at::kDouble) - b.to(at::kDouble)).abs().max().item<double>();
}

void test_sinkhorn() {
  if (!has_cpu_kernel("seer_kernels::sinkhorn")) {
    check(false, "sinkhorn has a CPU kernel");
    return;
  }
  auto sinkhorn =
      op("seer_kernels::sinkhorn").typed<at::Tensor(const at::Tensor&, double, int64_t)>();
  at::manual_seed(0);
  for (int64_t b : {1, 7, 64}) {
    for (int64_t k : {1, 3, 300}) {
      for (double eps : {0.01, 0.05}) {
        for (int64_t iters : {0, 1, 3}) {
          auto scores = at::rand({b, k}) * 2 - 1;  // cosine-like scores in [-1, 1]
          auto codes = sinkhorn.call(scores, eps, iters);
          const at::Tensor ref = sinkhorn_ref(scores, eps, iters);
          // fp32 rounds scores / eps by |L| * 2^-24: relative to the codes' magnitude
          // (up to B when iters = 0).
          const double tol = 2e-5 * std::max(1.0, ref.abs().max().item<double>());
          double err = max_abs_diff(codes, ref);
          check(codes.scalar_type() == at::kFloat && err < tol,
                "sinkhorn B=" + std::to_string(b) + " K=" + std::to_string(k) +
                    " eps=" + std::to_string(eps) + " iters=" + std::to_string(iters) +
                    " err=" + std::to_string(err));
        }
      }
    }
  }
}

// (A, B, K) scores in one call: each crop its own problem, bitwise the per-crop calls
// (the row chunks and every merge are per crop), and the building blocks likewise.
void test_sinkhorn_crops() {
  auto sinkhorn =
      op("seer_kernels::sinkhorn").typed<at::Tensor(const at::Tensor&, double, int64_t)>();
  auto colstats = op("seer_kernels::sinkhorn_colstats")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool)>();
  auto codes_op = op("seer_kernels::sinkhorn_codes")
                      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, bool)>();
  at::manual_seed(3);
  for (int64_t a : {1, 3}) {
    for (int64_t iters : {0, 1, 3}) {
      auto scores = at::rand({a, 37, 300}) * 2 - 1;
      auto together = sinkhorn.call(scores, 0.05, iters);
      bool same = together.sizes() == scores.sizes();
      double err = 0;
      for (int64_t i = 0; i < a; ++i) {
        same = same && at::equal(together[i], sinkhorn.call(scores[i], 0.05, iters));
        const at::Tensor ref = sinkhorn_ref(scores[i], 0.05, iters);
        err = std::max(
            err, max_abs_diff(together[i], ref) / std::max(1.0, ref.abs().max().item<double>()));
      }
      check(same && err < 2e-5, "sinkhorn crops A=" + std::to_string(a) + " iters=" +
                                    std::to_string(iters) + " err=" + std::to_string(err));
    }
    auto scores = at::rand({a, 9, 17}) * 2 - 1;
    auto log_u = at::randn({a, 17});
    auto stats = colstats.call(scores, log_u, 0.05, true);
    auto out = codes_op.call(scores, log_u, 0.05, true);
    bool same = stats.sizes() == at::IntArrayRef({a, 2, 17}) && out.sizes() == scores.sizes();
    for (int64_t i = 0; i < a; ++i) {
      same = same && at::equal(stats[i], colstats.call(scores[i], log_u[i], 0.05, true)) &&
             at::equal(out[i], codes_op.call(scores[i], log_u[i], 0.05, true));
    }
    check(same, "sinkhorn_colstats / sinkhorn_codes crops A=" + std::to_string(a));
  }
}

void test_prototype_scores() {
  if (!has_cpu_kernel("seer_kernels::prototype_scores")) {
    check(false, "prototype_scores has a CPU kernel");
    return;
  }
  auto scores_op = op("seer_kernels::prototype_scores")
                       .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, bool)>();
  at::manual_seed(1);
  for (int64_t n : {1, 7, 33}) {
    auto e = at::randn({n, 5});
    auto p = at::randn({11, 5});
    auto out = std::get<0>(scores_op.call(e, p, true));
    auto e64 = e.to(at::kDouble), p64 = p.to(at::kDouble);
    auto ref = at::mm(e64 / e64.norm(2, {1}, true), (p64 / p64.norm(2, {1}, true)).t());
    double err = max_abs_diff(out, ref);
    check(err < 1e-5, "prototype_scores N=" + std::to_string(n) + " err=" + std::to_string(err));
  }
}

void test_swav_cross_entropy() {
  if (!has_cpu_kernel("seer_kernels::swav_cross_entropy")) {
    check(false, "swav_cross_entropy has a CPU kernel");
    return;
  }
  auto ce = op("seer_kernels::swav_cross_entropy")
                .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                          double)>();
  at::manual_seed(2);
  const int64_t v = 4, a = 2, b = 9, k = 13;
  const double t = 0.1;
  auto scores = at::rand({v, b, k}) * 2 - 1;
  auto codes = at::softmax(at::randn({a, b, k}), 2);
  auto loss = std::get<0>(ce.call(scores, codes, t));
  auto s64 = scores.to(at::kDouble), c64 = codes.to(at::kDouble);
  double ref = 0;
  for (int64_t i = 0; i < a; ++i) {
    double sub = 0;
    for (int64_t j = 0; j < v; ++j) {
      if (j == i) continue;
      sub -= (c64[i] * at::log_softmax(s64[j] / t, 1)).sum(1).mean().item<double>();
    }
    ref += sub / (v - 1);
  }
  ref /= a;
  double err = std::abs(loss.item<double>() - ref);
  check(err < 1e-5, "swav_cross_entropy err=" + std::to_string(err));
}

// The fused head against its definition (cosine scores, then the loop over crop pairs);
// its gradients are checked against float64 autograd in tests/test_prototype_cross_entropy.py,
// here only that grad_e is tangent to e (the gradient through a normalization is
// orthogonal to its input row).
void test_prototype_cross_entropy() {
  if (!has_cpu_kernel("seer_kernels::prototype_cross_entropy")) {
    check(false, "prototype_cross_entropy has a CPU kernel");
    return;
  }
  auto head = op("seer_kernels::prototype_cross_entropy")
                  .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor>(
                      const at::Tensor&, const at::Tensor&, const at::Tensor&, double, bool)>();
  at::manual_seed(3);
  const int64_t v = 4, a = 2, b = 9, d = 6, k = 300;
  const double t = 0.1;
  auto e = at::randn({v, b, d});
  auto p = at::randn({k, d});
  auto codes = at::softmax(at::randn({a, b, k}), 2);
  auto [loss, grad_e, grad_p] = head.call(e, p, codes, t, true);
  auto e64 = e.to(at::kDouble), p64 = p.to(at::kDouble), c64 = codes.to(at::kDouble);
  auto scores = at::matmul(e64 / e64.norm(2, {2}, true), (p64 / p64.norm(2, {1}, true)).t());
  double ref = 0;
  for (int64_t i = 0; i < a; ++i) {
    double sub = 0;
    for (int64_t j = 0; j < v; ++j) {
      if (j == i) continue;
      sub -= (c64[i] * at::log_softmax(scores[j] / t, 1)).sum(1).mean().item<double>();
    }
    ref += sub / (v - 1);
  }
  ref /= a;
  double err = std::abs(loss.item<double>() - ref);
  check(err < 1e-5, "prototype_cross_entropy err=" + std::to_string(err));
  double radial = (grad_e.to(at::kDouble) * e64).sum(2).abs().max().item<double>();
  check(radial < 1e-6,
        "prototype_cross_entropy grad_e is tangent, radial=" + std::to_string(radial));
}

}  // namespace

int main() {
  test_schemas();
  test_sinkhorn();
  test_sinkhorn_crops();
  test_prototype_scores();
  test_swav_cross_entropy();
  test_prototype_cross_entropy();
  std::printf("%d failure(s)\n", failures);
  return failures == 0 ? 0 : 1;
}
