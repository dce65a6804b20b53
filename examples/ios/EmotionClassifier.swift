// edge-ser Core ML starter: run an edge-ser `.mlpackage` artifact in an iOS 17+ / macOS 14+ app.
//
// Add `model.mlpackage` from the artifact folder to the Xcode target: Xcode compiles it into
// `model.mlmodelc` inside the app bundle (load it with `EmotionClassifier.bundled()`). A package
// downloaded at run time must be compiled on the device first (`EmotionClassifier.compiling(packageAt:)`).
//
// Input: 16 kHz mono Float32 samples in [-1, 1]. Convert microphone or file audio with
// AVAudioConverter to `AVAudioFormat(commonFormat: .pcmFormatFloat32, sampleRate: 16_000,
// channels: 1, interleaved: false)` before calling `classify`.
//
// Not compiled by edge-ser's test suite; the contract constants below are checked against a
// freshly converted artifact's manifest.json by tests/test_examples.py.

import CoreML
import Foundation

/// The artifact contract (manifest.json of `edge-ser convert --target coreml`).
/// Every line marked `edge-ser:manifest <key>` is compared with the manifest by
/// tests/test_examples.py; update them together when the model changes (e.g. `--window-s`).
enum EmotionModelContract {
    static let sampleRate = 16_000  // edge-ser:manifest sample_rate
    static let windowSamples = 48_000  // edge-ser:manifest window_samples
    static let inputName = "waveform"  // edge-ser:manifest inputs.0.name
    static let inputShape: [NSNumber] = [1, 48_000]  // edge-ser:manifest inputs.0.shape
    static let inputDataType = MLMultiArrayDataType.float32  // edge-ser:manifest inputs.0.dtype
    static let probsName = "probs"  // edge-ser:manifest outputs.0.name
    static let probsShape: [NSNumber] = [1, 9]  // edge-ser:manifest outputs.0.shape
    static let avdName = "avd"  // edge-ser:manifest outputs.1.name
    static let avdShape: [NSNumber] = [1, 3]  // edge-ser:manifest outputs.1.shape
    static let embeddingName = "embedding"  // edge-ser:manifest outputs.2.name
    static let embeddingShape: [NSNumber] = [1, 256]  // edge-ser:manifest outputs.2.shape
    static let outputDataType = MLMultiArrayDataType.float32  // edge-ser:manifest outputs.*.dtype
    static let labels = ["neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt", "other"]  // edge-ser:manifest labels
    static let dimensions = ["arousal", "valence", "dominance"]  // edge-ser:manifest dimensions

    /// Streaming artifacts (`edge-ser convert ... --stream-hop S`): `inputName` takes one hop of samples,
    /// then come the carried states as (input, output) pairs; each output is the same state's input on
    /// the next call, all start at zeros. Their shapes depend on the model and are read from it.
    static let audioIn = "audio_in"  // edge-ser:manifest streaming.state.0.input
    static let audioOut = "audio_out"  // edge-ser:manifest streaming.state.0.output
    static let hIn = "h_in"  // edge-ser:manifest streaming.state.1.input
    static let hOut = "h_out"  // edge-ser:manifest streaming.state.1.output
    static let ctxIn = "ctx_in"  // edge-ser:manifest streaming.state.2.input
    static let ctxOut = "ctx_out"  // edge-ser:manifest streaming.state.2.output
    static let poolIn = "pool_in"  // edge-ser:manifest streaming.state.3.input
    static let poolOut = "pool_out"  // edge-ser:manifest streaming.state.3.output
    static let countIn = "count_in"  // edge-ser:manifest streaming.state.4.input
    static let countOut = "count_out"  // edge-ser:manifest streaming.state.4.output
    static let states = [(audioIn, audioOut), (hIn, hOut), (ctxIn, ctxOut), (poolIn, poolOut), (countIn, countOut)]
    /// `--stream-fm cached` artifacts (the foundation model runs on the hop's frames only) carry two more:
    /// its key/value cache and its running statistics.
    static let kvIn = "kv_in"  // edge-ser:manifest streaming.state.5.input
    static let kvOut = "kv_out"  // edge-ser:manifest streaming.state.5.output
    static let statsIn = "stats_in"  // edge-ser:manifest streaming.state.6.input
    static let statsOut = "stats_out"  // edge-ser:manifest streaming.state.6.output
    static let cachedFMStates = [(kvIn, kvOut), (statsIn, statsOut)]
}

/// One clip's emotions.
struct EmotionPrediction {
    /// Class probabilities (softmax) by label, in `EmotionModelContract.labels` order.
    let probabilities: [(label: String, probability: Float)]
    /// Arousal, valence, dominance on the [0, 1] scale (0.5 = middle of the graders' 1...7 scale).
    let arousal: Float
    let valence: Float
    let dominance: Float
    /// Utterance embedding, `embeddingShape[1]` values (for clustering, retrieval, personalisation).
    let embedding: [Float]
    /// How many model windows were averaged.
    var windows: Int = 1

    /// The k most probable labels, best first.
    func topK(_ k: Int = 3) -> [(label: String, probability: Float)] {
        Array(probabilities.sorted { $0.probability > $1.probability }.prefix(k))
    }
}

/// One window of a timeline; times in seconds from the start of the recording.
struct EmotionTimelinePoint {
    let startSeconds: Double
    let endSeconds: Double
    let prediction: EmotionPrediction
}

enum EmotionClassifierError: Error, CustomStringConvertible {
    case emptyAudio
    case nonFiniteSample(index: Int)
    case badHop(samples: Int)
    case contractMismatch(String)

    var description: String {
        switch self {
        case .emptyAudio:
            return "audio is empty; expected at least one 16 kHz Float32 sample."
        case .nonFiniteSample(let index):
            return "sample \(index) is NaN or infinite; expected finite samples in [-1, 1]."
        case .badHop(let samples):
            return "hop of \(samples) samples; expected 1...\(EmotionModelContract.windowSamples) so no audio is skipped."
        case .contractMismatch(let what):
            return "\(what). Update EmotionModelContract from the artifact's manifest.json."
        }
    }
}

final class EmotionClassifier {
    private let model: MLModel
    private let input: MLMultiArray  // one window, reused for every prediction

    /// Loads a compiled model (`.mlmodelc`) and checks its inputs/outputs against the contract.
    init(compiledModelURL: URL, computeUnits: MLComputeUnits = .all) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits  // .cpuOnly reproduces the float32 parity numbers
        model = try MLModel(contentsOf: compiledModelURL, configuration: configuration)
        input = try MLMultiArray(shape: EmotionModelContract.inputShape, dataType: EmotionModelContract.inputDataType)
        try checkContract()
    }

    /// The model Xcode compiled from `model.mlpackage` into the app bundle.
    static func bundled(named name: String = "model") throws -> EmotionClassifier {
        guard let url = Bundle.main.url(forResource: name, withExtension: "mlmodelc") else {
            throw EmotionClassifierError.contractMismatch("\(name).mlmodelc is not in the app bundle; add \(name).mlpackage to the target")
        }
        return try EmotionClassifier(compiledModelURL: url)
    }

    /// Compiles a downloaded `.mlpackage` on the device, then loads it. Compile once and keep the
    /// returned `.mlmodelc` (it lives in a temporary folder: move it somewhere permanent).
    static func compiling(packageAt packageURL: URL) async throws -> EmotionClassifier {
        let compiledURL = try await MLModel.compileModel(at: packageURL)
        return try EmotionClassifier(compiledModelURL: compiledURL)
    }

    // MARK: - Prediction

    /// Exactly one window (`windowSamples` samples at 16 kHz).
    func classifyWindow(_ samples: ArraySlice<Float>) throws -> EmotionPrediction {
        precondition(samples.count == EmotionModelContract.windowSamples, "one window is \(EmotionModelContract.windowSamples) samples")
        input.withUnsafeMutableBufferPointer(ofType: Float.self) { buffer, _ in
            // Shape [1, windowSamples] is contiguous, so the window is one run of floats.
            for (offset, sample) in samples.enumerated() { buffer[offset] = sample }
        }
        let features = try MLDictionaryFeatureProvider(dictionary: [EmotionModelContract.inputName: MLFeatureValue(multiArray: input)])
        let output = try model.prediction(from: features)
        let probs = try values(output, EmotionModelContract.probsName)
        let avd = try values(output, EmotionModelContract.avdName)
        let embedding = try values(output, EmotionModelContract.embeddingName)
        return EmotionPrediction(
            probabilities: Array(zip(EmotionModelContract.labels, probs)).map { (label: $0.0, probability: $0.1) },
            arousal: avd[0], valence: avd[1], dominance: avd[2], embedding: embedding)
    }

    /// A clip of any length: non-overlapping windows, averaged with weights proportional to the
    /// real samples in each (the same rule as the Python runtime, `edge_ser.runtime`).
    func classify(_ audio: [Float]) throws -> EmotionPrediction {
        try validate(audio)
        let spans = windowSpans(count: audio.count, hop: EmotionModelContract.windowSamples)
        let total = Float(spans.reduce(0) { $0 + $1.count })
        var probs = [Float](repeating: 0, count: EmotionModelContract.labels.count)
        var avd: [Float] = [0, 0, 0]
        var embedding = [Float](repeating: 0, count: EmotionModelContract.embeddingShape[1].intValue)
        for span in spans {
            let p = try classifyWindow(filledWindow(audio, span))
            let w = Float(span.count) / total
            for i in probs.indices { probs[i] += w * p.probabilities[i].probability }
            avd[0] += w * p.arousal; avd[1] += w * p.valence; avd[2] += w * p.dominance
            for i in embedding.indices { embedding[i] += w * p.embedding[i] }
        }
        return EmotionPrediction(
            probabilities: Array(zip(EmotionModelContract.labels, probs)).map { (label: $0.0, probability: $0.1) },
            arousal: avd[0], valence: avd[1], dominance: avd[2], embedding: embedding, windows: spans.count)
    }

    /// An emotion timeline: one prediction per window, windows every `hopSeconds` (<= window length).
    func timeline(_ audio: [Float], hopSeconds: Double = 1.0) throws -> [EmotionTimelinePoint] {
        try validate(audio)
        let hop = Int((hopSeconds * Double(EmotionModelContract.sampleRate)).rounded())
        guard hop >= 1, hop <= EmotionModelContract.windowSamples else { throw EmotionClassifierError.badHop(samples: hop) }
        let rate = Double(EmotionModelContract.sampleRate)
        return try windowSpans(count: audio.count, hop: hop).map { span in
            EmotionTimelinePoint(startSeconds: Double(span.lowerBound) / rate, endSeconds: Double(span.upperBound) / rate,
                                 prediction: try classifyWindow(filledWindow(audio, span)))
        }
    }

    // MARK: - Windowing

    /// Sample ranges covering `count` samples with windows every `hop` samples; the last window is
    /// aligned to the end so none needs padding. A clip shorter than a window is one range.
    func windowSpans(count: Int, hop: Int) -> [Range<Int>] {
        let window = EmotionModelContract.windowSamples
        guard count > window else { return [0..<count] }
        var spans = stride(from: 0, through: count - window, by: hop).map { $0..<($0 + window) }
        if let last = spans.last, last.upperBound < count { spans.append((count - window)..<count) }
        return spans
    }

    /// The span as exactly one window; a short clip is repeated to fill it, which keeps the clip's
    /// statistics (the model averages over time) instead of diluting them with silence.
    private func filledWindow(_ audio: [Float], _ span: Range<Int>) -> ArraySlice<Float> {
        let window = EmotionModelContract.windowSamples
        if span.count == window { return audio[span] }
        return ArraySlice((0..<window).map { audio[span.lowerBound + $0 % span.count] })
    }

    private func validate(_ audio: [Float]) throws {
        guard !audio.isEmpty else { throw EmotionClassifierError.emptyAudio }
        if let bad = audio.firstIndex(where: { !$0.isFinite }) { throw EmotionClassifierError.nonFiniteSample(index: bad) }
    }

    // MARK: - Contract

    private func values(_ output: MLFeatureProvider, _ name: String) throws -> [Float] {
        guard let array = output.featureValue(for: name)?.multiArrayValue else {
            throw EmotionClassifierError.contractMismatch("the model returned no multi-array named '\(name)'")
        }
        // Index through [0, i] so any strides Core ML chose for the output are respected.
        return (0..<array.shape[1].intValue).map { array[[0, NSNumber(value: $0)]].floatValue }
    }

    private func checkContract() throws {
        let description = model.modelDescription
        guard let inputConstraint = description.inputDescriptionsByName[EmotionModelContract.inputName]?.multiArrayConstraint,
              inputConstraint.shape == EmotionModelContract.inputShape,
              inputConstraint.dataType == EmotionModelContract.inputDataType else {
            throw EmotionClassifierError.contractMismatch(
                "input '\(EmotionModelContract.inputName)' is not Float32 \(EmotionModelContract.inputShape)")
        }
        let outputs = [(EmotionModelContract.probsName, EmotionModelContract.probsShape),
                       (EmotionModelContract.avdName, EmotionModelContract.avdShape),
                       (EmotionModelContract.embeddingName, EmotionModelContract.embeddingShape)]
        for (name, shape) in outputs {
            guard let constraint = description.outputDescriptionsByName[name]?.multiArrayConstraint,
                  constraint.shape == shape, constraint.dataType == EmotionModelContract.outputDataType else {
                throw EmotionClassifierError.contractMismatch("output '\(name)' is not Float32 \(shape)")
            }
        }
    }
}

/// A streaming artifact: `push` samples as they arrive (16 kHz mono Float32); each completed hop runs
/// the model once with the carried states and yields the running estimate, pooled over every frame
/// since the start (or the last `reset()`). The same loop as `edge_ser.runtime.EmotionStream`.
/// `segmentHops`: reset by itself every that many hops (nil: never). A `--stream-fm cached` artifact
/// counts positions since the segment start: it resets at least every 30 s (`streaming.max_segment_hops`).
final class EmotionStream {
    private let model: MLModel
    private let hop: MLMultiArray
    private var states: [String: MLMultiArray] = [:]  // by input name
    private let stateNames: [(String, String)]
    private let segmentHops: Int?
    private var filled = 0
    private var hops = 0
    let hopSamples: Int

    init(compiledModelURL: URL, computeUnits: MLComputeUnits = .cpuOnly, segmentHops: Int? = nil) throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiledModelURL, configuration: configuration)
        let inputs = model.modelDescription.inputDescriptionsByName
        guard let hopShape = inputs[EmotionModelContract.inputName]?.multiArrayConstraint?.shape,
              hopShape.count == 2 else {
            throw EmotionClassifierError.contractMismatch("input '\(EmotionModelContract.inputName)' is not [1, hop]")
        }
        hopSamples = hopShape[1].intValue
        hop = try MLMultiArray(shape: hopShape, dataType: .float32)
        let cached = inputs[EmotionModelContract.kvIn] != nil
        stateNames = EmotionModelContract.states + (cached ? EmotionModelContract.cachedFMStates : [])
        // A cached artifact's segments hold at most Whisper's 1500 positions, 30 s (manifest streaming.max_segment_s).
        let maxHops = 30 * EmotionModelContract.sampleRate / hopSamples
        self.segmentHops = cached ? min(segmentHops ?? maxHops, maxHops) : segmentHops
        for (name, _) in stateNames {
            guard let shape = inputs[name]?.multiArrayConstraint?.shape else {
                throw EmotionClassifierError.contractMismatch("the model has no state input '\(name)'; expected a streaming artifact")
            }
            states[name] = try MLMultiArray(shape: shape, dataType: .float32)
        }
        reset(keepingAudio: false)
    }

    /// A new segment of the same audio: every state but the audio context back to zeros (the head's; with
    /// `--stream-fm cached` also the key/value cache, positions and statistics).
    func reset(keepingAudio: Bool = true) {
        for (name, _) in stateNames where !(keepingAudio && name == EmotionModelContract.audioIn) {
            states[name]!.withUnsafeMutableBufferPointer(ofType: Float.self) { buffer, _ in
                for i in buffer.indices { buffer[i] = 0 }
            }
        }
    }

    /// Appends samples; returns one point per hop they complete (often none or one).
    func push(_ samples: [Float]) throws -> [EmotionTimelinePoint] {
        var points: [EmotionTimelinePoint] = []
        for (index, sample) in samples.enumerated() {
            guard sample.isFinite else { throw EmotionClassifierError.nonFiniteSample(index: index) }
            hop[filled] = NSNumber(value: sample)
            filled += 1
            if filled == hopSamples {
                if let segment = segmentHops, hops > 0, hops % segment == 0 { reset() }
                let rate = Double(EmotionModelContract.sampleRate)
                let start = Double(hops * hopSamples) / rate
                points.append(EmotionTimelinePoint(startSeconds: start, endSeconds: start + Double(hopSamples) / rate,
                                                   prediction: try runHop()))
                filled = 0
                hops += 1
            }
        }
        return points
    }

    private func runHop() throws -> EmotionPrediction {
        var inputs: [String: MLFeatureValue] = [EmotionModelContract.inputName: MLFeatureValue(multiArray: hop)]
        for (name, array) in states { inputs[name] = MLFeatureValue(multiArray: array) }
        let output = try model.prediction(from: try MLDictionaryFeatureProvider(dictionary: inputs))
        for (input, outputName) in stateNames {
            guard let next = output.featureValue(for: outputName)?.multiArrayValue else {
                throw EmotionClassifierError.contractMismatch("the model returned no state '\(outputName)'")
            }
            // Copy the values: the state must outlive this prediction's output buffers.
            let target = states[input]!
            for i in 0..<target.count { target[i] = next[i] }
        }
        func values(_ name: String) throws -> [Float] {
            guard let array = output.featureValue(for: name)?.multiArrayValue else {
                throw EmotionClassifierError.contractMismatch("the model returned no multi-array named '\(name)'")
            }
            return (0..<array.shape[1].intValue).map { array[[0, NSNumber(value: $0)]].floatValue }
        }
        let probs = try values(EmotionModelContract.probsName)
        let avd = try values(EmotionModelContract.avdName)
        return EmotionPrediction(
            probabilities: Array(zip(EmotionModelContract.labels, probs)).map { (label: $0.0, probability: $0.1) },
            arousal: avd[0], valence: avd[1], dominance: avd[2], embedding: try values(EmotionModelContract.embeddingName))
    }
}

// Usage (e.g. in a view model):
//
//     let classifier = try EmotionClassifier.bundled()
//     let prediction = try classifier.classify(samples16kMono)      // [Float], any length
//     for (label, p) in prediction.topK(3) { print(label, p) }
//     print(prediction.arousal, prediction.valence, prediction.dominance)
//     let points = try classifier.timeline(longRecording, hopSeconds: 1.0)
//
//     // A streaming artifact, fed from the microphone tap (16 kHz mono Float32 buffers):
//     let stream = try EmotionStream(compiledModelURL: streamModelURL)
//     for point in try stream.push(bufferSamples) { show(point.prediction.topK(1), at: point.endSeconds) }
