// llama-pace: times llama.cpp forwards on request, so that a benchmark can interleave them with
// its own forwards at the granularity of single steps (see examples/forward_cost.rs,
// `--llama-pace`). A shared host's speed drifts over tens of seconds; two programs timed one after
// the other see different hosts, two interleaved step by step see the same one.
//
//   llama-pace MODEL.gguf THREADS CONTEXT
//
// Loads the model, decodes a CONTEXT-token prefix (ids 100 + i % 1000, as forward_cost does),
// prints "ready", then for every line "n" on stdin runs one forward of n tokens (ids 200..200+n,
// logits for all of them, as a verification needs), prints its wall time in milliseconds, and
// removes those n positions from the KV cache again. Ends at EOF or on an empty line.
//
// Built by scripts/llama-cpp.sh against the static libraries of the same llama.cpp build.

#include "llama.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level, const char *, void *) {}

int main(int argc, char ** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s MODEL.gguf THREADS CONTEXT\n", argv[0]);
        return 2;
    }
    const int threads = std::atoi(argv[2]);
    const int context = std::atoi(argv[3]);
    if (threads < 1 || context < 1) {
        std::fprintf(stderr, "error: THREADS and CONTEXT must be positive integers\n");
        return 2;
    }
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        std::fprintf(stderr, "error: cannot load %s\n", argv[1]);
        return 1;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = context + 64;
    cp.n_batch = context + 64;
    cp.n_ubatch = context + 64;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        std::fprintf(stderr, "error: cannot create a context of %d positions\n", context + 64);
        return 1;
    }
    const int max_n = 64;
    llama_batch batch = llama_batch_init(context > max_n ? context : max_n, 0, 1);
    auto fill = [&](int n, int first_id, int first_pos, bool all_logits) {
        batch.n_tokens = n;
        for (int i = 0; i < n; i++) {
            batch.token[i] = first_id + (first_id == 100 ? i % 1000 : i);
            batch.pos[i] = first_pos + i;
            batch.n_seq_id[i] = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i] = all_logits || i == n - 1;
        }
    };
    fill(context, 100, 0, false);
    if (llama_decode(ctx, batch) != 0) {
        std::fprintf(stderr, "error: the prefix did not decode\n");
        return 1;
    }
    llama_memory_t mem = llama_get_memory(ctx);
    std::printf("ready\n");
    std::fflush(stdout);
    std::string line;
    while (std::getline(std::cin, line) && !line.empty()) {
        const int n = std::atoi(line.c_str());
        if (n < 1 || n > max_n) {
            std::fprintf(stderr, "error: n must be in 1..%d, got '%s'\n", max_n, line.c_str());
            return 2;
        }
        fill(n, 200, context, true);
        const auto t0 = std::chrono::steady_clock::now();
        const int rc = llama_decode(ctx, batch);
        const auto t1 = std::chrono::steady_clock::now();
        if (rc != 0) {
            std::fprintf(stderr, "error: llama_decode returned %d\n", rc);
            return 1;
        }
        llama_memory_seq_rm(mem, 0, context, -1);
        std::printf("%.4f\n", std::chrono::duration<double, std::milli>(t1 - t0).count());
        std::fflush(stdout);
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
