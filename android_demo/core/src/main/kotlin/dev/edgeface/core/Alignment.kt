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

    /**
     * The template in the network input's pixels: the `crop` region [x, y, w, h] of the 112x112 frame
     * (ModelSpec.cropBox()) scaled uniformly to `width`, as `edgeface.runtime.align.align_face` does. A
     * 112x96 network gets the central 96 columns at full scale, never a squeezed face.
     */
    fun template(height: Int, width: Int, crop: DoubleArray = defaultCrop(height, width)): DoubleArray {
        require(crop.size == 4 && crop[2] > 0 && crop[3] > 0) { "face crop must be [x, y, w, h]" }
        val scale = width / crop[2]
        return DoubleArray(10) { (ARCFACE_TEMPLATE[it] - crop[it % 2]) * scale }
    }

    /** The largest centred region of the 112x112 frame with the input's aspect ratio. */
    fun defaultCrop(height: Int, width: Int): DoubleArray {
        val cw = if (width >= height) 112.0 else 112.0 * width / height
        val ch = if (width >= height) 112.0 * height / width else 112.0
        return doubleArrayOf((112.0 - cw) / 2, (112.0 - ch) / 2, cw, ch)
    }

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

    /** The matrix that warps a face with these five landmarks onto a `height` x `width` network input. */
    fun alignmentMatrix(
        landmarks: DoubleArray,
        height: Int,
        width: Int,
        crop: DoubleArray = defaultCrop(height, width)
    ): DoubleArray {
        require(landmarks.size == 10) { "expected five (x, y) landmarks, got ${landmarks.size / 2}" }
        require(landmarks.all { !it.isNaN() && !it.isInfinite() }) { "landmarks must be finite" }
        return similarityTransform(landmarks, template(height, width, crop))
    }
}
