// The README's training example: training steps in C++ (forward, loss, backward, SGD update)
// of the tutorial's module on a causal self-attention toy task. Exits with status 1 unless the
// loss went down.
#include <cstdio>
#include <vector>

#include "simdattn/simdattn.hpp"
#include "usage.hpp"

int main(int argc, char** argv) {
  const int status = tools::check_no_arguments(
      argc, argv,
      "Training steps (forward, loss, backward, SGD update) on a causal self-attention\n"
      "toy task; exits with status 1 unless the loss went down.");
  if (status >= 0) return status;
  const std::size_t embed_size = 64, heads = 4, steps = 20;
  const simdattn::Tensor x = simdattn::Tensor::randn(2, 16, embed_size, /*seed=*/1);
  const simdattn::Tensor target = simdattn::Tensor::randn(2, 16, embed_size, /*seed=*/2);
  double first_loss = 0, loss = 0;

  simdattn::MultiHeadAttention attention(embed_size, heads, /*seed=*/0);
  simdattn::Options options;
  options.causal = simdattn::Causal::top_left;
  const float learning_rate = 0.5f;
  simdattn::Gradients grads;  // reused step after step
  for (std::size_t step = 0; step < steps; ++step) {
    // Forward.
    const simdattn::Tensor out = attention.forward(x, x, x, {}, options);

    // Loss: the mean squared error against the target, and its gradient dLoss/dout.
    simdattn::Tensor d_out(out.n(), out.l(), out.e());
    loss = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
      const float diff = out.data()[i] - target.data()[i];
      loss += diff * diff / out.size();
      d_out.data()[i] = 2 * diff / out.size();
    }

    // Backward: the gradient of every weight and bias, and of x (in grads.query).
    attention.backward(x, x, x, d_out, grads, {}, options);

    // SGD update.
    for (simdattn::Projection p : {simdattn::Projection::query, simdattn::Projection::key,
                                   simdattn::Projection::value, simdattn::Projection::output}) {
      std::vector<float> w = attention.weight(p);
      for (std::size_t i = 0; i < w.size(); ++i) w[i] -= learning_rate * grads.weight(p)[i];
      attention.set_weight(p, w);
      if (attention.has_bias(p)) {
        std::vector<float> b = attention.bias(p);
        for (std::size_t i = 0; i < b.size(); ++i) b[i] -= learning_rate * grads.bias(p)[i];
        attention.set_bias(p, b);
      }
    }
    if (step == 0) first_loss = loss;
    if (step % 5 == 0 || step + 1 == steps) std::printf("step %2zu: loss %.4f\n", step, loss);
  }
  const bool lowered = loss < 0.9 * first_loss;
  std::printf("loss %.4f -> %.4f: %s\n", first_loss, loss, lowered ? "lowered" : "NOT lowered");
  return lowered ? 0 : 1;
}
