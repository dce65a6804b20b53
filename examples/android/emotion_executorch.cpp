// edge-ser ExecuTorch starter: run an edge-ser `.pte` artifact with the ExecuTorch
// C++ Module API (Android NDK, Linux, macOS). Not built by edge-ser's test suite; the
// contract constants below are checked against a freshly converted artifact's
// manifest.json by tests/test_examples.py.
//
// Build: link against ExecuTorch's `extension_module`, `extension_tensor`,
// `extension_data_loader`, `executorch` and the XNNPACK backend (`xnnpack_backend`,
// whole-archive so its delegate registers itself), e.g. with ExecuTorch's CMake package:
//   target_link_libraries(app executorch extension_module_static extension_tensor
//                         optimized_native_cpu_ops_lib xnnpack_backend)
// On Android, wrap EmotionClassifier in a JNI function and feed it the AudioRecord buffer
// (ENCODING_PCM_FLOAT, 16 kHz, CHANNEL_IN_MONO), or use ExecuTorch's Java/Kotlin Module.
//
// Command line (define EDGE_SER_NO_MAIN to drop main() when embedding the class):
//   emotion_executorch model.pte audio.f32 [hop_seconds]
//   emotion_executorch --stream stream.pte audio.f32 [chunk_seconds]   (a streaming artifact)
// audio.f32 is raw little-endian float32, 16 kHz, mono, samples in [-1, 1], e.g.
//   ffmpeg -i clip.wav -ac 1 -ar 16000 -f f32le audio.f32

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace edge_ser {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::extension::Module;
using executorch::extension::from_blob;
using executorch::runtime::Error;

// ---------------------------------------------------------------------------------------
// The artifact contract (manifest.json of `edge-ser convert --target executorch`).
// Every line marked `edge-ser:manifest <key>` is compared with the manifest by
// tests/test_examples.py; update them together when the model changes (e.g. --window-s).
namespace contract {
constexpr int kSampleRate = 16000;  // edge-ser:manifest sample_rate
constexpr int kWindowSamples = 48000;  // edge-ser:manifest window_samples
constexpr const char* kInputName = "waveform";  // edge-ser:manifest inputs.0.name
constexpr std::array<SizesType, 2> kInputShape = {1, 48000};  // edge-ser:manifest inputs.0.shape
constexpr ScalarType kInputDType = ScalarType::Float;  // edge-ser:manifest inputs.0.dtype
// Outputs come back in this order; a `.pte` has no output names, only positions.
constexpr const char* kProbsName = "probs";  // edge-ser:manifest outputs.0.name
constexpr std::array<SizesType, 2> kProbsShape = {1, 9};  // edge-ser:manifest outputs.0.shape
constexpr const char* kAvdName = "avd";  // edge-ser:manifest outputs.1.name
constexpr std::array<SizesType, 2> kAvdShape = {1, 3};  // edge-ser:manifest outputs.1.shape
constexpr const char* kEmbeddingName = "embedding";  // edge-ser:manifest outputs.2.name
constexpr std::array<SizesType, 2> kEmbeddingShape = {1, 256};  // edge-ser:manifest outputs.2.shape
constexpr ScalarType kOutputDType = ScalarType::Float;  // edge-ser:manifest outputs.*.dtype
constexpr std::array<const char*, 9> kLabels = {"neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt", "other"};  // edge-ser:manifest labels
constexpr std::array<const char*, 3> kDimensions = {"arousal", "valence", "dominance"};  // edge-ser:manifest dimensions

// Streaming artifacts (`edge-ser convert ... --stream-hop S`): input 0 is one hop of samples, then
// the carried states; outputs probs, avd, embedding, then the next states. Each state output is
// fed back as the same state's input on the next call; all start at zeros. Their shapes depend
// on the model and are read from the program (manifest "streaming.state").
constexpr const char* kAudioIn = "audio_in";  // edge-ser:manifest streaming.state.0.input
constexpr const char* kAudioOut = "audio_out";  // edge-ser:manifest streaming.state.0.output
constexpr const char* kHIn = "h_in";  // edge-ser:manifest streaming.state.1.input
constexpr const char* kHOut = "h_out";  // edge-ser:manifest streaming.state.1.output
constexpr const char* kCtxIn = "ctx_in";  // edge-ser:manifest streaming.state.2.input
constexpr const char* kCtxOut = "ctx_out";  // edge-ser:manifest streaming.state.2.output
constexpr const char* kPoolIn = "pool_in";  // edge-ser:manifest streaming.state.3.input
constexpr const char* kPoolOut = "pool_out";  // edge-ser:manifest streaming.state.3.output
constexpr const char* kCountIn = "count_in";  // edge-ser:manifest streaming.state.4.input
constexpr const char* kCountOut = "count_out";  // edge-ser:manifest streaming.state.4.output
// Artifacts converted with `--stream-fm cached` (the foundation model runs on the hop's frames only)
// carry two more states after these five: its key/value cache and its running statistics.
constexpr const char* kKvIn = "kv_in";  // edge-ser:manifest streaming.state.5.input
constexpr const char* kKvOut = "kv_out";  // edge-ser:manifest streaming.state.5.output
constexpr const char* kStatsIn = "stats_in";  // edge-ser:manifest streaming.state.6.input
constexpr const char* kStatsOut = "stats_out";  // edge-ser:manifest streaming.state.6.output
constexpr std::size_t kWindowFmStates = 5;  // --stream-fm window: the first five states
// A cached artifact's segments hold at most Whisper's 1500 positions, 30 s (manifest streaming.max_segment_s).
constexpr std::size_t kCachedMaxSegmentSamples = 30 * kSampleRate;
constexpr std::array<const char*, 7> kStateInputs = {kAudioIn, kHIn, kCtxIn, kPoolIn, kCountIn, kKvIn, kStatsIn};
constexpr std::array<const char*, 7> kStateOutputs = {kAudioOut, kHOut, kCtxOut, kPoolOut, kCountOut, kKvOut,
                                                      kStatsOut};
}  // namespace contract

constexpr std::size_t kNumLabels = contract::kLabels.size();

struct Prediction {
  std::array<float, kNumLabels> probabilities{};  // softmax, in contract::kLabels order
  float arousal = 0.f;                            // [0, 1]; 0.5 = middle of the 1..7 scale
  float valence = 0.f;
  float dominance = 0.f;
  std::vector<float> embedding;                   // kEmbeddingShape[1] values
  int windows = 1;

  // The k most probable labels, best first.
  std::vector<std::pair<std::string, float>> top_k(std::size_t k) const {
    std::vector<std::pair<std::string, float>> ranked;
    for (std::size_t i = 0; i < kNumLabels; ++i) ranked.emplace_back(contract::kLabels[i], probabilities[i]);
    std::stable_sort(ranked.begin(), ranked.end(),
                     [](const auto& a, const auto& b) { return a.second > b.second; });
    ranked.resize(std::min(k, ranked.size()));
    return ranked;
  }
};

struct TimelinePoint {
  double start_s;
  double end_s;
  Prediction prediction;
};

// Sample ranges [start, end) covering `n` samples with windows of kWindowSamples every
// `hop` samples; the last window is aligned to the end so no window needs padding. A clip
// no longer than one window is a single range (filled by repetition in run_span).
// Same rule as edge_ser.runtime.EmotionModel.windows.
inline std::vector<std::pair<std::size_t, std::size_t>> window_spans(std::size_t n, std::size_t hop) {
  const std::size_t w = contract::kWindowSamples;
  if (n <= w) return {{0, n}};
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  for (std::size_t s = 0; s + w <= n; s += hop) spans.emplace_back(s, s + w);
  if (spans.back().second < n) spans.emplace_back(n - w, n);
  return spans;
}

class EmotionClassifier {
 public:
  // Loads the program (memory-mapped) and its "forward" method, and checks that the
  // program's input/output shapes and dtypes are the ones this code was written for.
  explicit EmotionClassifier(const std::string& pte_path)
      : module_(pte_path, Module::LoadMode::Mmap), window_(contract::kWindowSamples, 0.f) {
    if (module_.load_forward() != Error::Ok) {
      throw std::runtime_error("cannot load " + pte_path +
                               ": expected an edge-ser ExecuTorch artifact (model.pte) built with the XNNPACK "
                               "delegate; check the path and that xnnpack_backend is linked (whole-archive).");
    }
    check_contract();
  }

  // One window of exactly kWindowSamples float32 samples at 16 kHz.
  Prediction classify_window(const float* samples) {
    std::copy(samples, samples + contract::kWindowSamples, window_.begin());
    return run_window();
  }

  // A clip of any length (>= 1 sample) at 16 kHz: non-overlapping windows, averaged with
  // weights proportional to the real samples in each (as edge_ser.runtime does).
  Prediction classify(const std::vector<float>& audio) {
    const auto spans = window_spans(checked_size(audio), contract::kWindowSamples);
    Prediction merged;
    merged.embedding.assign(contract::kEmbeddingShape[1], 0.f);
    double total = 0.0;
    for (const auto& span : spans) total += static_cast<double>(span.second - span.first);
    for (const auto& span : spans) {
      const Prediction p = run_span(audio, span);
      const float w = static_cast<float>((span.second - span.first) / total);
      for (std::size_t i = 0; i < kNumLabels; ++i) merged.probabilities[i] += w * p.probabilities[i];
      merged.arousal += w * p.arousal;
      merged.valence += w * p.valence;
      merged.dominance += w * p.dominance;
      for (std::size_t i = 0; i < merged.embedding.size(); ++i) merged.embedding[i] += w * p.embedding[i];
    }
    merged.windows = static_cast<int>(spans.size());
    return merged;
  }

  // One prediction per window, windows every `hop_samples` (<= kWindowSamples).
  std::vector<TimelinePoint> timeline(const std::vector<float>& audio, std::size_t hop_samples) {
    if (hop_samples == 0 || hop_samples > static_cast<std::size_t>(contract::kWindowSamples)) {
      throw std::invalid_argument("hop of " + std::to_string(hop_samples) + " samples; expected 1.." +
                                  std::to_string(contract::kWindowSamples) + " so no audio is skipped.");
    }
    std::vector<TimelinePoint> points;
    for (const auto& span : window_spans(checked_size(audio), hop_samples)) {
      points.push_back({static_cast<double>(span.first) / contract::kSampleRate,
                        static_cast<double>(span.second) / contract::kSampleRate, run_span(audio, span)});
    }
    return points;
  }

 private:
  static std::size_t checked_size(const std::vector<float>& audio) {
    if (audio.empty()) throw std::invalid_argument("audio is empty; expected at least one 16 kHz sample.");
    for (float x : audio) {
      if (!std::isfinite(x)) throw std::invalid_argument("audio contains NaN or inf; expected finite samples.");
    }
    return audio.size();
  }

  // Copies a span into the window buffer; a short clip is repeated to fill the window
  // (keeps the clip's statistics, which the model pools over time).
  Prediction run_span(const std::vector<float>& audio, std::pair<std::size_t, std::size_t> span) {
    const std::size_t len = span.second - span.first;
    for (std::size_t i = 0; i < window_.size(); ++i) window_[i] = audio[span.first + (i % len)];
    return run_window();
  }

  Prediction run_window() {
    // from_blob wraps window_ without copying; it must outlive the call (it is a member).
    auto input = from_blob(window_.data(), {contract::kInputShape[0], contract::kInputShape[1]}, contract::kInputDType);
    const auto result = module_.forward(input);
    if (!result.ok()) {
      throw std::runtime_error("forward failed with ExecuTorch error " +
                               std::to_string(static_cast<int>(result.error())));
    }
    const auto& outputs = *result;
    const auto probs = outputs.at(0).toTensor();
    const auto avd = outputs.at(1).toTensor();
    const auto embedding = outputs.at(2).toTensor();
    Prediction p;
    const float* probs_data = probs.const_data_ptr<float>();
    std::copy(probs_data, probs_data + kNumLabels, p.probabilities.begin());
    const float* avd_data = avd.const_data_ptr<float>();
    p.arousal = avd_data[0];
    p.valence = avd_data[1];
    p.dominance = avd_data[2];
    const float* emb_data = embedding.const_data_ptr<float>();
    p.embedding.assign(emb_data, emb_data + embedding.numel());
    return p;
  }

  template <std::size_t N>
  static void expect_shape(const char* what, executorch::runtime::Span<const int32_t> got,
                           const std::array<SizesType, N>& want) {
    bool same = got.size() == N;
    for (std::size_t i = 0; same && i < N; ++i) same = got[i] == want[i];
    if (!same) {
      std::string g, w;
      for (std::size_t i = 0; i < got.size(); ++i) g += (i ? ", " : "") + std::to_string(got[i]);
      for (std::size_t i = 0; i < N; ++i) w += (i ? ", " : "") + std::to_string(want[i]);
      throw std::runtime_error(std::string(what) + " has shape [" + g + "]; this code expects [" + w +
                               "]. Update the edge-ser:manifest constants from the artifact's manifest.json.");
    }
  }

  void check_contract() {
    const auto meta = module_.method_meta("forward");
    if (!meta.ok()) throw std::runtime_error("the program has no 'forward' method; expected an edge-ser artifact.");
    if (meta->num_inputs() != 1 || meta->num_outputs() != 3) {
      throw std::runtime_error("forward takes " + std::to_string(meta->num_inputs()) + " inputs and returns " +
                               std::to_string(meta->num_outputs()) + " outputs; expected 1 (" +
                               contract::kInputName + ") and 3 (probs, avd, embedding).");
    }
    const auto in = meta->input_tensor_meta(0);
    if (!in.ok() || in->scalar_type() != contract::kInputDType) {
      throw std::runtime_error(std::string("input '") + contract::kInputName + "' is not a float32 tensor.");
    }
    expect_shape(contract::kInputName, in->sizes(), contract::kInputShape);
    const std::array<const char*, 3> names = {contract::kProbsName, contract::kAvdName, contract::kEmbeddingName};
    const std::array<std::array<SizesType, 2>, 3> shapes = {contract::kProbsShape, contract::kAvdShape,
                                                            contract::kEmbeddingShape};
    for (std::size_t i = 0; i < 3; ++i) {
      const auto out = meta->output_tensor_meta(i);
      if (!out.ok() || out->scalar_type() != contract::kOutputDType) {
        throw std::runtime_error(std::string("output '") + names[i] + "' is not a float32 tensor.");
      }
      expect_shape(names[i], out->sizes(), shapes[i]);
    }
  }

  Module module_;
  std::vector<float> window_;  // one input window, reused for every call
};

// A streaming artifact: push() samples as they arrive (16 kHz mono float32 in [-1, 1]); every
// completed hop runs the program once with the carried states and returns the running estimate,
// pooled over every frame since the start (or the last reset()). Same loop as
// edge_ser.runtime.EmotionStream. segment_hops: reset() by itself every that many hops (0: never).
// A `--stream-fm cached` artifact counts positions since the segment start and needs a reset at
// least every manifest "streaming.max_segment_hops" hops (30 s): with 0 it resets every 30 s.
class EmotionStream {
 public:
  explicit EmotionStream(const std::string& pte_path, std::size_t segment_hops = 0)
      : module_(pte_path, Module::LoadMode::Mmap), segment_hops_(segment_hops) {
    if (module_.load_forward() != Error::Ok) {
      throw std::runtime_error("cannot load " + pte_path + ": expected an edge-ser streaming ExecuTorch artifact.");
    }
    const auto meta = module_.method_meta("forward");
    const std::size_t n_states = meta.ok() ? meta->num_inputs() - 1 : 0;
    if (!meta.ok() || (n_states != contract::kWindowFmStates && n_states != contract::kStateInputs.size()) ||
        meta->num_outputs() != 3 + n_states) {
      throw std::runtime_error("the program does not take a hop plus " + std::to_string(contract::kWindowFmStates) +
                               " or " + std::to_string(contract::kStateInputs.size()) +
                               " states; expected a streaming artifact (edge-ser convert ... --stream-hop S).");
    }
    const auto hop = meta->input_tensor_meta(0);
    hop_ = static_cast<std::size_t>(hop->sizes()[hop->sizes().size() - 1]);
    const std::size_t max_hops = contract::kCachedMaxSegmentSamples / hop_;
    if (n_states == contract::kStateInputs.size() && (segment_hops_ == 0 || segment_hops_ > max_hops)) {
      segment_hops_ = max_hops;
    }
    for (std::size_t i = 0; i < n_states; ++i) {
      const auto in = meta->input_tensor_meta(1 + i);
      const auto out = meta->output_tensor_meta(3 + i);
      std::vector<SizesType> sizes(in->sizes().begin(), in->sizes().end());
      if (!out.ok() || std::vector<SizesType>(out->sizes().begin(), out->sizes().end()) != sizes) {
        throw std::runtime_error(std::string("state ") + contract::kStateInputs[i] + " and " +
                                 contract::kStateOutputs[i] + " differ in shape; expected one state carried.");
      }
      std::size_t count = 1;
      for (auto d : sizes) count *= static_cast<std::size_t>(d);
      state_sizes_.push_back(sizes);
      states_.emplace_back(count, 0.f);
    }
  }

  std::size_t hop_samples() const { return hop_; }

  // Appends n samples; returns one point per hop they complete (often none or one).
  std::vector<TimelinePoint> push(const float* samples, std::size_t n) {
    std::vector<TimelinePoint> points;
    for (std::size_t i = 0; i < n; ++i) {
      if (!std::isfinite(samples[i]) || std::fabs(samples[i]) > 1.f) {
        throw std::invalid_argument("sample " + std::to_string(i) + " of the chunk is NaN/inf or outside [-1, 1].");
      }
      pending_.push_back(samples[i]);
      if (pending_.size() == hop_) {
        if (segment_hops_ && hops_ && hops_ % segment_hops_ == 0) reset();
        const double start = static_cast<double>(hops_ * hop_) / contract::kSampleRate;
        points.push_back({start, start + static_cast<double>(hop_) / contract::kSampleRate, run_hop()});
        pending_.clear();
        ++hops_;
      }
    }
    return points;
  }

  // A new segment of the same audio: every state but the audio context (state 0) back to zeros (the
  // head's; with --stream-fm cached also the key/value cache, positions and statistics).
  void reset() {
    for (std::size_t i = 1; i < states_.size(); ++i) std::fill(states_[i].begin(), states_[i].end(), 0.f);
  }

 private:
  Prediction run_hop() {
    std::vector<executorch::extension::TensorPtr> tensors;
    tensors.push_back(from_blob(pending_.data(), {1, static_cast<SizesType>(hop_)}, ScalarType::Float));
    for (std::size_t i = 0; i < states_.size(); ++i) {
      tensors.push_back(from_blob(states_[i].data(), state_sizes_[i], ScalarType::Float));
    }
    std::vector<executorch::runtime::EValue> inputs;
    for (const auto& t : tensors) inputs.emplace_back(*t);
    const auto result = module_.forward(inputs);
    if (!result.ok()) {
      throw std::runtime_error("forward failed with ExecuTorch error " +
                               std::to_string(static_cast<int>(result.error())));
    }
    const auto& outputs = *result;
    Prediction p;
    const float* probs = outputs.at(0).toTensor().const_data_ptr<float>();
    std::copy(probs, probs + kNumLabels, p.probabilities.begin());
    const float* avd = outputs.at(1).toTensor().const_data_ptr<float>();
    p.arousal = avd[0];
    p.valence = avd[1];
    p.dominance = avd[2];
    const auto embedding = outputs.at(2).toTensor();
    p.embedding.assign(embedding.const_data_ptr<float>(), embedding.const_data_ptr<float>() + embedding.numel());
    // Copy the next states out: the outputs live in the method's buffers, which the next call reuses.
    for (std::size_t i = 0; i < states_.size(); ++i) {
      const float* next = outputs.at(3 + i).toTensor().const_data_ptr<float>();
      std::copy(next, next + states_[i].size(), states_[i].begin());
    }
    return p;
  }

  Module module_;
  std::size_t segment_hops_ = 0;
  std::size_t hop_ = 0;
  std::size_t hops_ = 0;
  std::vector<float> pending_;
  std::vector<std::vector<SizesType>> state_sizes_;
  std::vector<std::vector<float>> states_;
};

}  // namespace edge_ser

#ifndef EDGE_SER_NO_MAIN
namespace {

std::vector<float> read_f32(const std::string& path) {
  std::ifstream file(path, std::ios::binary | std::ios::ate);
  if (!file) throw std::runtime_error("cannot open " + path + "; expected raw float32 16 kHz mono audio.");
  const std::streamsize bytes = file.tellg();
  if (bytes <= 0 || bytes % static_cast<std::streamsize>(sizeof(float)) != 0) {
    throw std::runtime_error(path + " has " + std::to_string(bytes) +
                             " bytes; expected a non-empty multiple of 4 (raw float32 samples).");
  }
  std::vector<float> samples(static_cast<std::size_t>(bytes) / sizeof(float));
  file.seekg(0);
  file.read(reinterpret_cast<char*>(samples.data()), bytes);
  return samples;
}

}  // namespace

// --stream: feed the file in chunks of chunk_seconds (as a microphone would) and print each hop's estimate.
int stream_main(const std::string& pte, const std::string& audio_path, double chunk_s) {
  edge_ser::EmotionStream stream(pte);
  const std::vector<float> audio = read_f32(audio_path);
  const auto chunk = std::max<std::size_t>(1, static_cast<std::size_t>(std::lround(chunk_s * edge_ser::contract::kSampleRate)));
  std::printf("%s: streaming, hops of %zu samples\n", audio_path.c_str(), stream.hop_samples());
  for (std::size_t start = 0; start < audio.size(); start += chunk) {
    const std::size_t n = std::min(chunk, audio.size() - start);
    for (const auto& point : stream.push(audio.data() + start, n)) {
      const auto best = point.prediction.top_k(1).front();
      std::printf("  %7.2f-%7.2f s  %-9s %.2f  A %.2f V %.2f D %.2f\n", point.start_s, point.end_s,
                  best.first.c_str(), best.second, point.prediction.arousal, point.prediction.valence,
                  point.prediction.dominance);
    }
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 4 && std::string(argv[1]) == "--stream") {
    try {
      return stream_main(argv[2], argv[3], argc > 4 ? std::stod(argv[4]) : 0.1);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s model.pte audio.f32 [hop_seconds]\n       %s --stream model.pte audio.f32 "
                 "[chunk_seconds]\n", argv[0], argv[0]);
    return 2;
  }
  try {
    edge_ser::EmotionClassifier classifier(argv[1]);
    const std::vector<float> audio = read_f32(argv[2]);
    const edge_ser::Prediction p = classifier.classify(audio);
    std::printf("%s: %d window(s)\n", argv[2], p.windows);
    for (const auto& [label, prob] : p.top_k(3)) std::printf("  %-9s %.3f\n", label.c_str(), prob);
    std::printf("  arousal %.3f  valence %.3f  dominance %.3f\n", p.arousal, p.valence, p.dominance);
    if (argc > 3) {
      const double hop_s = std::stod(argv[3]);
      const auto hop = static_cast<std::size_t>(std::lround(hop_s * edge_ser::contract::kSampleRate));
      for (const auto& point : classifier.timeline(audio, hop)) {
        const auto best = point.prediction.top_k(1).front();
        std::printf("  %7.2f-%7.2f s  %-9s %.2f  A %.2f V %.2f D %.2f\n", point.start_s, point.end_s,
                    best.first.c_str(), best.second, point.prediction.arousal, point.prediction.valence,
                    point.prediction.dominance);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
#endif  // EDGE_SER_NO_MAIN
