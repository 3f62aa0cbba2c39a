package dev.edgeface.demo

import org.opencv.core.Mat

/** One processed frame: the largest face's embedding (null when no face) and the time of each stage. */
class FrameResult(val face: DetectedFace?, val embedding: FloatArray?, val times: StageTimes)

/**
 * detect -> align -> preprocess -> inference -> postprocess, the order of `edgeface.runtime.pipeline`.
 * Thin on purpose: the numerics live in the unit-tested core module, this class only wires stages and
 * times them.
 */
class FacePipeline(
    private val detector: FaceDetector,
    private val aligner: FaceAligner,
    private val embedder: LiteRtEmbedder
) : AutoCloseable {
    fun process(bgr: Mat, times: StageTimes): FrameResult {
        val faces = times.stage("detect") { detector.detect(bgr) }
        val face = faces.firstOrNull() ?: return FrameResult(null, null, times)
        val crop = times.stage("align") { aligner.align(bgr, face.landmarks) }
        return FrameResult(face, embedder.embed(crop, times), times)
    }

    override fun close() {
        detector.close()
        embedder.close()
    }
}
