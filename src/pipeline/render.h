// Rendering: job spec -> MP4. The Engine holds the loaded networks so a batch reuses them
// while the model and device stay the same.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "pipeline/job.h"
#include "pipeline/progress.h"

namespace mg {

// Where each component's weights come from, resolved from --model and the overrides.
struct ModelPaths {
  std::string dit, t5, vae, tokenizer, moga_weights;
  bool operator==(const ModelPaths& o) const {
    return dit == o.dit && t5 == o.t5 && vae == o.vae && tokenizer == o.tokenizer &&
           moga_weights == o.moga_weights;
  }
};
// Throws mg::Error(BadWeights) pointing at README.md "Getting Wan2.1 weights" when a
// component cannot be found.
ModelPaths resolve_model_paths(const JobSpec& job);
// The default model folder (models/ next to the binary's install or source tree), or "".
std::string default_model_dir();
// The model_index.json of the model folder the job will use (its --model, else the default
// model when a component is not given by its own flag), parsed, when that file carries
// sampling defaults ("_mogagen": {"defaults": {settings}}); nullopt otherwise.
std::optional<JsonDoc> model_defaults(const JobSpec& job);

struct RenderResult {
  std::string output;
  int64_t frames = 0;
  double seconds = 0;
  uint64_t seed = 0;
};

class Engine {
 public:
  Engine(const ModelPaths& paths, const std::string& device, Progress& progress);
  ~Engine();
  const ModelPaths& paths() const;
  const std::string& device() const;
  RenderResult render(const JobSpec& job);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mg
