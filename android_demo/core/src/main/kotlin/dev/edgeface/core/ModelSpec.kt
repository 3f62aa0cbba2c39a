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
    val threshold: Double?,
    val precision: String,
    val inputQuant: TensorQuant?,
    val outputQuant: TensorQuant?
) {
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
            if (name !is String || name.length == 0) fail("'name' must be a non-empty string")
            val size = numbers(data, "input_size", 2)
            if (size.any { it != Math.floor(it) || it < 1 }) {
                fail("'input_size' must be two positive integers, got $size")
            }
            val layout = Layout.values().firstOrNull { it.name == data.opt("layout") }
                ?: fail("'layout' must be one of NCHW, NHWC, got ${data.opt("layout")}")
            val order = ChannelOrder.values().firstOrNull { it.name == data.opt("channel_order") }
                ?: fail("'channel_order' must be one of RGB, BGR, got ${data.opt("channel_order")}")
            val mean = numbers(data, "mean", 3)
            val std = numbers(data, "std", 3)
            if (std.any { it <= 0 }) fail("'std' values must be > 0")
            val dim = data.opt("embedding_dim")
            if (!isInteger(dim) || (dim as Number).toLong() < 1) {
                fail("'embedding_dim' must be a positive integer, got $dim")
            }
            val threshold = optNumber(data, "threshold")
            if (data.has("threshold") && !data.isNull("threshold") &&
                (threshold == null || threshold < -1.0 || threshold > 1.0)
            ) {
                fail("'threshold' must be a cosine similarity in [-1, 1] or null, got ${data.opt("threshold")}")
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
            val scale = optNumber(tq, "scale")
            if (scale == null || scale <= 0) fail("'quantization.$side.scale' must be > 0")
            val dtype = tq.opt("dtype")
            if (dtype != "int8" && dtype != "uint8") fail("'quantization.$side.dtype' must be int8 or uint8")
            val zp = tq.opt("zero_point")
            if (!isInteger(zp)) fail("'quantization.$side.zero_point' must be an integer")
            return TensorQuant(scale, (zp as Number).toInt(), dtype as String)
        }

        private fun isNumber(v: Any?): Boolean = v is Number  // org.json gives Boolean for true/false

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

enum class ChannelOrder { RGB, BGR }

/** A user-facing problem with a spec file: shown on screen as one line, never a crash. */
class SpecException(message: String) : IllegalArgumentException(message)
