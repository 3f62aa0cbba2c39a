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
 * layout, for a batch of one.
 */
object Preprocess {
    fun normalize(bgr: ByteArray, spec: ModelSpec): FloatArray {
        val h = spec.inputHeight
        val w = spec.inputWidth
        require(bgr.size == h * w * 3) { "expected a ${h}x${w} BGR face (${h * w * 3} bytes), got ${bgr.size}" }
        val mean = FloatArray(3) { spec.mean[it].toFloat() }
        val std = FloatArray(3) { spec.std[it].toFloat() }
        val out = FloatArray(h * w * 3)
        for (y in 0 until h) {
            for (x in 0 until w) {
                for (c in 0 until 3) {
                    // c is the channel index in the spec's order; the source is BGR.
                    val src = if (spec.channelOrder == ChannelOrder.RGB) 2 - c else c
                    val v = (bgr[(y * w + x) * 3 + src].toInt() and 0xFF).toFloat()
                    val dst = if (spec.layout == Layout.NCHW) (c * h + y) * w + x else (y * w + x) * 3 + c
                    out[dst] = (v / 255f - mean[c]) / std[c]
                }
            }
        }
        return out
    }

    /** The spec's input quantization applied to a normalised tensor; fails for a float model. */
    fun quantizeInput(x: FloatArray, spec: ModelSpec): ByteArray {
        val tq = spec.inputQuant ?: throw IllegalStateException("spec '${spec.name}' has no input quantization")
        return tq.quantize(x)
    }
}
