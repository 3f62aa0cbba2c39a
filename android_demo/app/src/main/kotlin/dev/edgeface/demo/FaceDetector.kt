package dev.edgeface.demo

import org.opencv.core.Mat

/**
 * One detected face: its box in image pixels, five landmarks as flat x, y pairs (left eye, right eye,
 * nose tip, left and right mouth corner, left/right as seen in the image: the ArcFace template's order)
 * and the detector's score.
 */
class DetectedFace(val box: FloatArray, val landmarks: DoubleArray, val score: Float) {
    val area: Float get() = maxOf(box[2], 0f) * maxOf(box[3], 0f)
}

/**
 * The app's only view of face detection, so the detector can be swapped (YuNet through OpenCV today;
 * ML Kit or MediaPipe would be one more class) without touching alignment, embedding or matching.
 * Implementations return faces largest first.
 */
interface FaceDetector : AutoCloseable {
    fun detect(bgr: Mat): List<DetectedFace>
}
