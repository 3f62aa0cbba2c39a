package dev.edgeface.core

/**
 * Five-point alignment to the ArcFace 112x112 template, as `edgeface.runtime.align`.
 *
 * Only the 2x3 matrix is computed here (plain math, unit-tested on the JVM); the app hands it to OpenCV's
 * `warpAffine` with bilinear interpolation and a black border, the same call the Python runtime makes, so
 * the crop the phone embeds is the crop that was measured.
 */
object Alignment {
    /** Left eye, right eye, nose tip, left and right mouth corner (as seen in the image), x then y. */
    val ARCFACE_TEMPLATE = doubleArrayOf(
        38.2946, 51.6963,
        73.5318, 51.5014,
        56.0252, 71.7366,
        41.5493, 92.3655,
        70.7299, 92.2041
    )

    /** The template for an input of another size, scaled per axis like the Python runtime does. */
    fun template(height: Int, width: Int): DoubleArray =
        DoubleArray(10) { ARCFACE_TEMPLATE[it] * if (it % 2 == 0) width / 112.0 else height / 112.0 }

    /**
     * Least-squares similarity (rotation, uniform scale, translation) mapping `src` points onto `dst`;
     * both are flat x0, y0, x1, y1, ... arrays. Returns the row-major 2x3 matrix [a, -b, tx, b, a, ty].
     *
     * In 2-D every rotation-plus-scale matrix has the form [[a, -b], [b, a]], so the least-squares fit is
     * linear in (a, b) and has a closed form over the centred points: a = sum(s . d) / sum(|s|^2),
     * b = sum(s x d) / sum(|s|^2). That is Umeyama's solution with reflections excluded, which the Python
     * runtime computes with an SVD; the shared vectors check the two agree to 1e-6.
     */
    fun similarityTransform(src: DoubleArray, dst: DoubleArray): DoubleArray {
        require(src.size == dst.size && src.size % 2 == 0 && src.size >= 4) {
            "landmarks must be matching lists of at least two (x, y) points"
        }
        val n = src.size / 2
        var msx = 0.0
        var msy = 0.0
        var mdx = 0.0
        var mdy = 0.0
        for (i in 0 until n) {
            msx += src[2 * i]
            msy += src[2 * i + 1]
            mdx += dst[2 * i]
            mdy += dst[2 * i + 1]
        }
        msx /= n
        msy /= n
        mdx /= n
        mdy /= n
        var dot = 0.0
        var cross = 0.0
        var norm = 0.0
        for (i in 0 until n) {
            val sx = src[2 * i] - msx
            val sy = src[2 * i + 1] - msy
            val dx = dst[2 * i] - mdx
            val dy = dst[2 * i + 1] - mdy
            dot += sx * dx + sy * dy
            cross += sx * dy - sy * dx
            norm += sx * sx + sy * sy
        }
        if (norm / n < 1e-12) throw IllegalArgumentException("degenerate landmarks: all points coincide")
        val a = dot / norm
        val b = cross / norm
        return doubleArrayOf(a, -b, mdx - (a * msx - b * msy), b, a, mdy - (b * msx + a * msy))
    }

    /** The matrix that warps a face with these five landmarks onto a `height` x `width` template. */
    fun alignmentMatrix(landmarks: DoubleArray, height: Int, width: Int): DoubleArray {
        require(landmarks.size == 10) { "expected five (x, y) landmarks, got ${landmarks.size / 2}" }
        return similarityTransform(landmarks, template(height, width))
    }
}
