// Checkpoint layouts and name maps. Weights are bound once, by canonical name, through a
// per-layout name map. Canonical names:
//   DiT: the original Wan2.1 names (blocks.N.self_attn.q.weight, head.head.weight, ...)
//   VAE: the original Wan2.1 VAE names (decoder.conv1.weight, conv2.weight, ...)
//   umT5: the Hugging Face UMT5EncoderModel names (shared.weight, encoder.block.N...)
#pragma once
#include <map>
#include <string>
#include <vector>

#include "mogagen/safetensors.h"

namespace mg {

enum class Component { DiT, VAE, T5 };
enum class Layout {
  WanOriginal,  // Wan-AI files, and ComfyUI single files (wrapper prefix stripped)
  Diffusers,    // diffusers folder / transformer, vae safetensors
  HuggingFace,  // HF UMT5 names (diffusers text_encoder/, ComfyUI umt5_xxl_*.safetensors)
};
const char* layout_name(Layout l);
const char* component_name(Component c);

struct WeightSpec {
  std::string name;  // canonical
  Shape shape;
  bool optional = false;
};

// Weights of one component, addressed by canonical name.
class WeightMap {
 public:
  // `path` is a .safetensors file, a .safetensors.index.json, or a folder (a diffusers
  // component folder like transformer/, or a folder holding the file). The layout is
  // detected from the tensor names.
  static WeightMap open(const std::string& path, Component comp);
  static WeightMap from_source(TensorSource src, Component comp);

  // Adds the tensors of another file (e.g. MoGA routers, --moga-weights) by canonical name;
  // a name present in both takes the new file's tensor.
  void merge(const std::string& path);

  Layout layout() const { return layout_; }
  const TensorSource& source() const { return src_; }
  bool has(const std::string& canonical) const;
  Shape shape(const std::string& canonical) const;
  Tensor load_f32(const std::string& canonical) const;  // throws BadWeights when absent
  Tensor view(const std::string& canonical) const;      // stored dtype
  std::vector<std::string> canonical_names() const;
  // Checks the expected set; reports every missing, misshapen and unexpected tensor at
  // once (unexpected = in the file, not in `expected`, unless allow_extra).
  void check(const std::vector<WeightSpec>& expected, bool allow_extra = false) const;

 private:
  TensorSource src_;
  Component comp_ = Component::DiT;
  Layout layout_ = Layout::WanOriginal;
  std::map<std::string, std::string> canon_to_file_;
};

// Layout detection from a list of tensor names (exposed for tests).
Layout detect_layout(const std::vector<std::string>& names, Component comp);
// Canonical name for a file tensor name under a layout ("" when it has no canonical form,
// e.g. the VAE encoder under diffusers that is not needed). Also strips ComfyUI wrapper
// prefixes such as "model.diffusion_model." / "first_stage_model.".
std::string to_canonical(const std::string& file_name, Layout l, Component comp);

}  // namespace mg
