package dev.edgeface.core

import org.json.JSONArray
import org.json.JSONObject
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File

/**
 * The Kotlin port against the shared vectors (tests/data/vectors), the numbers the Python runtime computes;
 * tests/test_deploy_vectors.py checks the same file against Python, so the two cannot drift apart.
 */
class VectorsTest {
    private val dir = File(System.getProperty("edgeface.vectors") ?: "../../tests/data/vectors")
    private val vectors = JSONObject(File(dir, "vectors.json").readText())
    private val tol = vectors.getJSONObject("tolerance")

    private fun spec(name: String): ModelSpec = ModelSpec.parse(File(dir, name).readText())

    private fun doubles(a: JSONArray): DoubleArray = DoubleArray(a.length()) { a.getDouble(it) }

    private fun floats(a: JSONArray): FloatArray = FloatArray(a.length()) { a.getDouble(it).toFloat() }

    private fun objects(key: String): List<JSONObject> {
        val a = vectors.getJSONArray(key)
        return (0 until a.length()).map { a.getJSONObject(it) }
    }

    /** The synthetic image both languages build: (7x + 13y + 61c + 17) mod 256, BGR interleaved. */
    private fun pattern(h: Int, w: Int): ByteArray {
        val out = ByteArray(h * w * 3)
        for (y in 0 until h) for (x in 0 until w) for (c in 0 until 3) {
            out[(y * w + x) * 3 + c] = ((7 * x + 13 * y + 61 * c + 17) % 256).toByte()
        }
        return out
    }

    private fun checkSummary(values: DoubleArray, expected: JSONObject, tolerance: Double, what: String) {
        val shape = expected.getJSONArray("shape")
        var n = 1
        for (i in 0 until shape.length()) n *= shape.getInt(i)
        assertEquals("$what: element count", n, values.size)
        var sum = 0.0
        var sumSq = 0.0
        var weighted = 0.0
        for (i in values.indices) {
            sum += values[i]
            sumSq += values[i] * values[i]
            weighted += values[i] * (i % 97)
        }
        fun close(key: String, got: Double) {
            val want = expected.getDouble(key)
            assertTrue("$what: $key $got != $want", Math.abs(got - want) <= tolerance * maxOf(1.0, Math.abs(want)))
        }
        close("sum", sum)
        close("sum_squares", sumSq)
        close("weighted_sum", weighted)
        val samples = expected.getJSONArray("samples")
        for (i in 0 until samples.length()) {
            val s = samples.getJSONArray(i)
            assertEquals("$what: element ${s.getInt(0)}", s.getDouble(1), values[s.getInt(0)], tolerance)
        }
    }

    @Test
    fun specFilesParseLikePython() {
        val names = vectors.getJSONArray("specs")
        assertTrue(names.length() >= 2)
        for (i in 0 until names.length()) {
            val raw = JSONObject(File(dir, names.getString(i)).readText())
            val s = spec(names.getString(i))
            assertEquals(raw.getString("name"), s.name)
            assertEquals(raw.getJSONArray("input_size").getInt(0), s.inputHeight)
            assertEquals(raw.getString("layout"), s.layout.name)
            assertEquals(raw.getString("channel_order"), s.channelOrder.name)
            assertEquals(raw.getInt("embedding_dim"), s.embeddingDim)
            val mean = raw.getJSONArray("mean")
            assertEquals(mean.length(), s.mean.size)
            assertEquals(mean.getDouble(mean.length() - 1), s.mean.last(), 0.0)
            val q = raw.getJSONObject("quantization")
            assertEquals(q.isNull("input"), s.inputQuant == null)
            assertEquals(q.isNull("output"), s.outputQuant == null)
            if (raw.isNull("threshold")) assertEquals(null, s.threshold)
            else assertEquals(raw.getDouble("threshold"), s.threshold!!, 0.0)
        }
    }

    @Test
    fun invalidSpecsAreRejectedNamingTheFirstBadField() {
        for (case in objects("invalid_specs")) {
            val field = case.getString("field")
            try {
                ModelSpec.fromJson(case.getJSONObject("spec"))
                fail("a spec with a bad '$field' was accepted")
            } catch (e: SpecException) {
                assertTrue("'${e.message}' does not name $field", e.message!!.contains(field))
            }
        }
    }

    @Test
    fun preprocessingOfThePatternMatchesPython() {
        for (case in objects("preprocess")) {
            val s = spec(case.getString("spec"))
            val x = Preprocess.normalize(pattern(s.inputHeight, s.inputWidth), s)
            checkSummary(DoubleArray(x.size) { x[it].toDouble() }, case.getJSONObject("float"),
                tol.getDouble("float"), s.name)
            val tq = s.inputQuant
            if (tq != null) {
                val expected = case.getJSONObject("quantized")
                assertEquals(tq.dtype, expected.getString("dtype"))
                val q = Preprocess.quantizeInput(x, s)
                val ints = if (tq.dtype == "int8") DoubleArray(q.size) { q[it].toDouble() }
                else DoubleArray(q.size) { (q[it].toInt() and 0xFF).toDouble() }
                checkSummary(ints, expected, 0.0, "${s.name} quantized")
            } else {
                assertTrue(!case.has("quantized"))
            }
        }
    }

    @Test
    fun quantizationRoundsHalfToEvenAndClips() {
        for (case in objects("quantization")) {
            val tq = TensorQuant(case.getDouble("scale"), case.getInt("zero_point"), case.getString("dtype"))
            val x = floats(case.getJSONArray("x"))
            val want = case.getJSONArray("q")
            val deq = doubles(case.getJSONArray("dequantized"))
            for (i in x.indices) {
                val q = tq.quantize(x[i])
                assertEquals("quantize(${x[i]}) with scale ${tq.scale}", want.getInt(i), q)
                assertEquals(deq[i], tq.dequantize(q).toDouble(), 1e-6)
            }
        }
    }

    @Test
    fun similarityTransformMatchesUmeyama() {
        for (case in objects("alignment")) {
            val template = case.getJSONArray("template")
            val flatTemplate = DoubleArray(10) { template.getJSONArray(it / 2).getDouble(it % 2) }
            assertArrayEquals(flatTemplate, Alignment.ARCFACE_TEMPLATE, 0.0)
            val lm = case.getJSONArray("landmarks")
            val src = DoubleArray(10) { lm.getJSONArray(it / 2).getDouble(it % 2) }
            val m = case.getJSONArray("matrix")
            val want = DoubleArray(6) { m.getJSONArray(it / 3).getDouble(it % 3) }
            assertArrayEquals(case.getString("image"), want, Alignment.alignmentMatrix(src, 112, 112),
                tol.getDouble("matrix"))
        }
    }

    @Test
    fun cosineAndDecisionsMatchPython() {
        for (case in objects("cosine")) {
            val got = Matching.cosine(floats(case.getJSONArray("a")), floats(case.getJSONArray("b")))
            assertEquals(case.getDouble("cosine"), got, tol.getDouble("cosine"))
        }
        for (section in objects("artifacts")) {
            val s = spec(section.getString("spec"))
            assertEquals(section.getDouble("threshold"), s.threshold!!, 0.0)
            val faces = section.getJSONArray("faces")
            val emb = (0 until faces.length()).map { floats(faces.getJSONObject(it).getJSONArray("embedding")) }
            val pairs = section.getJSONArray("pairs")
            for (i in 0 until pairs.length()) {
                val p = pairs.getJSONObject(i)
                val d = Matching.verify(emb[p.getInt("a")], emb[p.getInt("b")], s.threshold)
                assertEquals(p.getDouble("cosine"), d.score, tol.getDouble("cosine"))
                assertEquals(p.getBoolean("match"), d.match)
            }
            if (section.has("raw_output")) {  // integer outputs: dequantize, then normalise
                val raw = section.getJSONArray("raw_output")
                for (i in 0 until raw.length()) {
                    val r = raw.getJSONArray(i)
                    val bytes = ByteArray(r.length()) { r.getInt(it).toByte() }
                    assertArrayEquals(emb[i], Matching.embedding(bytes, s), tol.getDouble("embedding").toFloat())
                }
            }
        }
    }
}
