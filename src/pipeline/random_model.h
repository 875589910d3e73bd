// `mogagen make-random-model`: writes a random-weight model folder in the diffusers layout
// the loader reads (model_index.json, transformer/, text_encoder/, tokenizer/, vae/), for
// tests and for trying the engine without real weights.
#pragma once
#include <cstdint>
#include <string>

namespace mg {

struct RandomModelArgs {
  std::string config;  // {"dit": {...}, "t5": {...}, "vae": {...}, "tokenizer": {...}}
  uint64_t seed = 0;
  std::string output;  // folder to create (must not exist or be empty)
};

void make_random_model(const RandomModelArgs& a);

// The caption corpus the tiny tokenizer is trained on (shapes, colours, motions).
std::string caption_corpus();

}  // namespace mg
