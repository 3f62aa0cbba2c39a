package dev.edgeface.demo

import org.opencv.core.Mat
import org.opencv.core.MatOfByte
import org.opencv.core.Size
import org.opencv.objdetect.FaceDetectorYN

/**
 * YuNet through OpenCV's FaceDetectorYN: the same model file, parameters and landmark order as the Python
 * runtime (`edgeface.runtime.detect`), so a face is aligned on the phone exactly as it was when the model's
 * accuracy and threshold were measured. ML Kit would be smaller, but its landmarks differ (NOSE_BASE is not
 * the nose tip, LEFT_EYE is the subject's left), which shifts every crop away from the measured one.
 */
class YuNetDetector(
    model: ByteArray,
    scoreThreshold: Float = 0.6f,
    nmsThreshold: Float = 0.3f,
    topK: Int = 50
) : FaceDetector {
    private val net: FaceDetectorYN =
        FaceDetectorYN.create("onnx", MatOfByte(*model), MatOfByte(), Size(320.0, 320.0), scoreThreshold, nmsThreshold, topK)
    private val rows = Mat()

    override fun detect(bgr: Mat): List<DetectedFace> {
        net.inputSize = Size(bgr.cols().toDouble(), bgr.rows().toDouble())
        net.detect(bgr, rows)
        val faces = ArrayList<DetectedFace>(rows.rows())
        val r = FloatArray(15)  // x, y, w, h, five (x, y) landmarks, score
        for (i in 0 until rows.rows()) {
            rows.get(i, 0, r)
            faces.add(DetectedFace(r.copyOfRange(0, 4), DoubleArray(10) { r[4 + it].toDouble() }, r[14]))
        }
        return faces.sortedByDescending { it.area }
    }

    override fun close() = rows.release()
}
