package dev.edgeface.demo

import dev.edgeface.core.Alignment
import dev.edgeface.core.ModelSpec
import org.opencv.core.Core
import org.opencv.core.CvType
import org.opencv.core.Mat
import org.opencv.core.Scalar
import org.opencv.core.Size
import org.opencv.imgproc.Imgproc

/**
 * Warps a face onto the spec's input size with the matrix `dev.edgeface.core.Alignment` computes (unit-
 * tested against the Python runtime) and the same warpAffine call as `edgeface.runtime.align.align_face`.
 */
class FaceAligner(private val spec: ModelSpec) {
    private val crop = Mat()
    private val matrix = Mat(2, 3, CvType.CV_64F)

    /** The aligned face as BGR interleaved bytes, ready for `Preprocess.normalize`. */
    fun align(bgr: Mat, landmarks: DoubleArray): ByteArray {
        matrix.put(0, 0, *Alignment.alignmentMatrix(landmarks, spec.inputHeight, spec.inputWidth, spec.cropBox()))
        Imgproc.warpAffine(
            bgr, crop, matrix, Size(spec.inputWidth.toDouble(), spec.inputHeight.toDouble()),
            Imgproc.INTER_LINEAR, Core.BORDER_CONSTANT, Scalar(0.0, 0.0, 0.0)
        )
        val bytes = ByteArray(spec.inputHeight * spec.inputWidth * 3)
        crop.get(0, 0, bytes)
        return bytes
    }
}
