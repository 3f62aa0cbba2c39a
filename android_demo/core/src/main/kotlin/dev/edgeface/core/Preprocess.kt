package dev.edgeface.core

/**
 * Affine int8/uint8 quantization of one model input or output, as in `edgeface.spec.TensorQuant`.
 *
 * The arithmetic is float32 on purpose, step for step like numpy's (`x / scale` in float32, round half to
 * even, add the zero point, clip): an int8 model's input then matches the Python runtime's bit for bit.
 * `Math.round` would round ties away from zero and move some pixels by one step.
 */
data class TensorQuant(val scale: Double, val zeroPoint: Int, val dtype: String) {
    val min: Int = if (dtype == "int8") -128 else 0
    val max: Int = if (dtype == "int8") 127 else 255

    fun quantize(x: Float): Int {
        val q = Math.rint((x / scale.toFloat()).toDouble()) + zeroPoint
        return q.coerceIn(min.toDouble(), max.toDouble()).toInt()
    }

    fun dequantize(q: Int): Float = (q - zeroPoint).toFloat() * scale.toFloat()

    /** Quantize a whole tensor into the bytes a TFLite int8/uint8 input buffer holds. */
    fun quantize(x: FloatArray): ByteArray = ByteArray(x.size) { quantize(x[it]).toByte() }

    /** Read integer outputs: int8 bytes are signed, uint8 bytes are not. */
    fun dequantize(q: ByteArray): FloatArray =
        FloatArray(q.size) { dequantize(if (dtype == "int8") q[it].toInt() else q[it].toInt() and 0xFF) }
}

/**
 * Aligned face -> network input, the contract of `edgeface.runtime.preprocess.normalize`.
 *
 * Input is an aligned crop as OpenCV holds it: BGR, interleaved, 8 bits per channel, `inputHeight` x
 * `inputWidth` (alignment produces exactly that size, so unlike the Python function no resize happens
 * here). Each value becomes `(v / 255 - mean[c]) / std[c]` in float32, in the spec's channel order and
 * layout, for a batch of one. A GRAY spec's one channel is the luma of each pixel ([luma]).
 */
object Preprocess {
    fun normalize(bgr: ByteArray, spec: ModelSpec): FloatArray {
        val h = spec.inputHeight
        val w = spec.inputWidth
        val n = spec.channelOrder.channels
        require(bgr.size == h * w * 3) { "expected a ${h}x${w} BGR face (${h * w * 3} bytes), got ${bgr.size}" }
        val mean = FloatArray(n) { spec.mean[it].toFloat() }
        val std = FloatArray(n) { spec.std[it].toFloat() }
        val out = FloatArray(h * w * n)
        for (y in 0 until h) {
            for (x in 0 until w) {
                val p = (y * w + x) * 3
                for (c in 0 until n) {
                    // c is the channel index in the spec's order; the source is BGR.
                    val v = when (spec.channelOrder) {
                        ChannelOrder.GRAY -> luma(byte(bgr, p), byte(bgr, p + 1), byte(bgr, p + 2))
                        ChannelOrder.RGB -> byte(bgr, p + 2 - c)
                        ChannelOrder.BGR -> byte(bgr, p + c)
                    }.toFloat()
                    val dst = if (spec.layout == Layout.NCHW) (c * h + y) * w + x else (y * w + x) * n + c
                    out[dst] = (v / 255f - mean[c]) / std[c]
                }
            }
        }
        return out
    }

    /**
     * BT.601 luma of one pixel in 14-bit fixed point, as `edgeface.runtime.preprocess.luma` computes it:
     * (1868 B + 9617 G + 4899 R + 8192) >> 14, the weights 0.114, 0.587, 0.299 times 2^14, rounded.
     */
    fun luma(b: Int, g: Int, r: Int): Int = (1868 * b + 9617 * g + 4899 * r + 8192) shr 14

    private fun byte(a: ByteArray, i: Int): Int = a[i].toInt() and 0xFF

    /** The spec's input quantization applied to a normalised tensor; fails for a float model. */
    fun quantizeInput(x: FloatArray, spec: ModelSpec): ByteArray {
        val tq = spec.inputQuant ?: throw IllegalStateException("spec '${spec.name}' has no input quantization")
        return tq.quantize(x)
    }
}
