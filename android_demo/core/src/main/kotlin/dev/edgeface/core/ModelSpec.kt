package dev.edgeface.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/**
 * The model spec (schema_version 1), the same contract as the Python `edgeface/spec.py`.
 *
 * The app never guesses preprocessing: it reads the `<artifact>.json` sidecar the exporter wrote, so a
 * model exported with another mean/std or channel order runs correctly without a code change. Validation
 * follows `edgeface.spec.validate` field by field and in the same order, so both sides reject the same
 * files and name the same field (the shared test vectors check this).
 */
data class ModelSpec(
    val name: String,
    val inputHeight: Int,
    val inputWidth: Int,
    val layout: Layout,
    val channelOrder: ChannelOrder,
    val mean: List<Double>,
    val std: List<Double>,
    val embeddingDim: Int,
    /** [x, y, w, h] of the ArcFace 112x112 frame the network sees (null: see [cropBox]). */
    val faceCrop: List<Double>?,
    val threshold: Double?,
    val precision: String,
    val inputQuant: TensorQuant?,
    val outputQuant: TensorQuant?
) {
    /**
     * The region of the aligned 112x112 face that becomes the network input, as `ModelSpec.crop_box()`:
     * the spec's `face_crop`, else the largest centred region with the input's aspect ratio (columns
     * 8..104 for a 112x96 network), so a non-square network never gets a squeezed face.
     */
    fun cropBox(): DoubleArray {
        faceCrop?.let { return it.toDoubleArray() }
        val side = 112.0
        val (cw, ch) = if (inputWidth >= inputHeight) {
            Pair(side, side * inputHeight / inputWidth)
        } else {
            Pair(side * inputWidth / inputHeight, side)
        }
        return doubleArrayOf((side - cw) / 2, (side - ch) / 2, cw, ch)
    }

    companion object {
        const val SCHEMA_VERSION = 1
        private val REQUIRED = listOf(
            "schema_version", "name", "input_size", "layout", "channel_order", "mean", "std", "embedding_dim"
        )
        private val PRECISIONS = listOf("fp32", "w8a8", "w6a6", "mixed")

        /** Parses and validates a spec; every problem is a [SpecException] naming the first bad field. */
        fun parse(json: String): ModelSpec {
            val data = try {
                JSONObject(json)
            } catch (e: JSONException) {
                throw SpecException("not a valid JSON object (${e.message})")
            }
            return fromJson(data)
        }

        fun fromJson(data: JSONObject): ModelSpec {
            if (data.has("schema_version")) {
                val v = data.opt("schema_version")
                if (!isNumber(v) || (v as Number).toDouble() != SCHEMA_VERSION.toDouble()) {
                    fail("schema_version $v is not supported (expected $SCHEMA_VERSION)")
                }
            }
            for (key in REQUIRED) if (!data.has(key)) fail("missing required field '$key'")
            val name = data.opt("name")
            if (name !is String || name.length == 0 || name.length > 512) {
                fail("'name' must be a non-empty string (at most 512 characters)")
            }
            val size = numbers(data, "input_size", 2)
            if (size.any { it != Math.floor(it) || it < 8 || it > 4096 }) {
                fail("'input_size' must be two integers in [8, 4096], got $size")
            }
            val layout = Layout.values().firstOrNull { it.name == data.opt("layout") }
                ?: fail("'layout' must be one of NCHW, NHWC, got ${data.opt("layout")}")
            val order = ChannelOrder.values().firstOrNull { it.name == data.opt("channel_order") }
                ?: fail("'channel_order' must be one of RGB, BGR, GRAY, got ${data.opt("channel_order")}")
            val mean = numbers(data, "mean", order.channels)
            if (mean.any { Math.abs(it) > 255 }) fail("'mean' values must lie in [-255, 255]")
            val std = numbers(data, "std", order.channels)
            if (std.any { it < 1e-6 || it > 1e6 }) fail("'std' values must be > 0 (and within [1e-6, 1e6])")
            val dim = data.opt("embedding_dim")
            if (!isInteger(dim) || (dim as Number).toLong() < 1 || dim.toLong() > 65536) {
                fail("'embedding_dim' must be an integer in [1, 65536], got $dim")
            }
            var crop: List<Double>? = null
            if (data.has("face_crop") && !data.isNull("face_crop")) {
                val c = numbers(data, "face_crop", 4)
                if (c[2] <= 0 || c[3] <= 0 || c[2] > 336 || c[3] > 336) {
                    fail("'face_crop' width and height must lie in (0, 336], got $c")
                }
                if (Math.abs(c[0]) > 112 || Math.abs(c[1]) > 112) {
                    fail("'face_crop' x and y must lie in [-112, 112], got $c")
                }
                if (Math.abs((c[2] / c[3]) / (size[1] / size[0]) - 1) > 0.01) {
                    fail("'face_crop' does not have the aspect ratio of input_size")
                }
                crop = c
            }
            val threshold = optNumber(data, "threshold")
            if (data.has("threshold") && !data.isNull("threshold") &&
                (threshold == null || threshold < -1.0 || threshold > 1.0)
            ) {
                fail("'threshold' must be a cosine similarity in [-1, 1] or null, got ${data.opt("threshold")}")
            }
            val far = optNumber(data, "threshold_far")
            if (data.has("threshold_far") && !data.isNull("threshold_far") &&
                (far == null || far <= 0.0 || far >= 1.0)
            ) {
                fail("'threshold_far' must be a rate in (0, 1) or null, got ${data.opt("threshold_far")}")
            }
            val precision = if (data.has("precision")) data.opt("precision") else "fp32"
            if (precision !is String || precision !in PRECISIONS) {
                fail("'precision' must be one of $PRECISIONS, got $precision")
            }
            var inputQuant: TensorQuant? = null
            var outputQuant: TensorQuant? = null
            if (data.has("quantization") && !data.isNull("quantization")) {
                val q = data.opt("quantization") as? JSONObject ?: fail("'quantization' must be an object")
                inputQuant = tensorQuant(q, "input")
                outputQuant = tensorQuant(q, "output")
            }
            return ModelSpec(
                name = name,
                inputHeight = size[0].toInt(),
                inputWidth = size[1].toInt(),
                layout = layout,
                channelOrder = order,
                mean = mean,
                std = std,
                embeddingDim = (dim as Number).toInt(),
                faceCrop = crop,
                threshold = threshold,
                precision = precision,
                inputQuant = inputQuant,
                outputQuant = outputQuant
            )
        }

        private fun tensorQuant(q: JSONObject, side: String): TensorQuant? {
            if (!q.has(side) || q.isNull(side)) return null
            val tq = q.opt(side) as? JSONObject ?: fail("'quantization.$side' needs scale, zero_point and dtype")
            if (!tq.has("scale") || !tq.has("zero_point") || !tq.has("dtype")) {
                fail("'quantization.$side' needs scale, zero_point and dtype")
            }
            val dtype = tq.opt("dtype")
            if (dtype != "int8" && dtype != "uint8") fail("'quantization.$side.dtype' must be int8 or uint8")
            val scale = optNumber(tq, "scale")
            if (scale == null || scale <= 0 || scale > 1e6) fail("'quantization.$side.scale' must be > 0 and finite")
            val zp = tq.opt("zero_point")
            val (lo, hi) = if (dtype == "int8") Pair(-128L, 127L) else Pair(0L, 255L)
            if (!isInteger(zp) || (zp as Number).toLong() < lo || zp.toLong() > hi) {
                fail("'quantization.$side.zero_point' must be an integer in [$lo, $hi]")
            }
            return TensorQuant(scale, (zp as Number).toInt(), dtype as String)
        }

        // org.json gives Boolean for true/false; NaN and Infinity are not numbers a spec may hold
        private fun isNumber(v: Any?): Boolean = v is Number && !v.toDouble().isNaN() && !v.toDouble().isInfinite()

        private fun isInteger(v: Any?): Boolean = v is Int || v is Long

        private fun optNumber(obj: JSONObject, key: String): Double? {
            val v = if (obj.has(key)) obj.opt(key) else null
            return if (isNumber(v)) (v as Number).toDouble() else null
        }

        private fun numbers(data: JSONObject, key: String, n: Int): List<Double> {
            val v = data.opt(key)
            if (v !is JSONArray || v.length() != n || (0 until n).any { !isNumber(v.opt(it)) }) {
                fail("'$key' must be a list of $n numbers, got $v")
            }
            return (0 until n).map { ((v as JSONArray).get(it) as Number).toDouble() }
        }

        private fun fail(message: String): Nothing = throw SpecException("invalid model spec: $message")
    }
}

enum class Layout { NCHW, NHWC }

/** GRAY is one channel: the BT.601 luma of the face ([Preprocess.luma]), with one mean and one std value. */
enum class ChannelOrder(val channels: Int) { RGB(3), BGR(3), GRAY(1) }

/** A user-facing problem with a spec file: shown on screen as one line, never a crash. */
class SpecException(message: String) : IllegalArgumentException(message)
