// safetensors reader: mmap, lazy per-tensor reads, sharded checkpoints.
// Every field a hostile file can get wrong is validated on open (header size bound,
// JSON, dtype names, offsets inside the data area and not overlapping, byte size equal
// to shape x dtype); errors are mg::Error(BadWeights) naming the file and the tensor.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "mogagen/tensor.h"

namespace mg {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t begin = 0, end = 0;  // byte offsets inside the data area
  int file = 0;               // index into the source's file list
};

class SafetensorsFile {
 public:
  // Opens and validates; throws mg::Error(BadWeights) with the path and the problem.
  static std::shared_ptr<SafetensorsFile> open(const std::string& path);
  const std::string& path() const { return path_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Zero-copy host view of the stored bytes (dtype as stored), valid while any copy of
  // the returned tensor lives.
  Tensor view(const std::string& name) const;
  ~SafetensorsFile();

 private:
  SafetensorsFile() = default;
  std::string path_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  size_t data_start_ = 0;
  std::shared_ptr<void> self_keepalive_;  // shares ownership of the mapping
  friend struct SafetensorsAccess;
};

// A set of safetensors files seen as one name space: a single file, the shards listed by a
// `*.safetensors.index.json`, or several files given explicitly. Duplicate names across
// files are an error.
class TensorSource {
 public:
  static TensorSource open(const std::string& path);  // file or .index.json
  static TensorSource open_files(const std::vector<std::string>& paths);
  // Host tensors held in memory under their names (benchmarks, tests); described as `label`.
  static TensorSource from_tensors(std::map<std::string, Tensor> tensors,
                                   const std::string& label = "(in memory)");
  bool has(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws BadWeights when absent
  std::vector<std::string> names() const;
  Tensor view(const std::string& name) const;      // stored dtype, zero-copy
  Tensor load_f32(const std::string& name) const;  // upcast to F32 (bf16/f16/fp8/ints)
  const std::vector<std::string>& files() const { return paths_; }
  // Adds the tensors of `other` (its files stay mapped). A name present in both is an error
  // naming both files, unless `replace`: then `other`'s tensor wins.
  void add(const TensorSource& other, bool replace = false);
  std::string describe() const;  // paths joined, for messages

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::vector<std::string> paths_;
  std::map<std::string, std::pair<int, TensorInfo>> index_;
  std::map<std::string, Tensor> mem_;  // from_tensors: file index -1
  std::string label_;
};

// Writes tensors (F32/BF16/F16/I64/I32) to a safetensors file (used by tools and tests).
void write_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace mg
