package dev.edgeface.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** Edge cases the shared vectors do not reach: bad inputs fail loudly instead of producing numbers. */
class CoreTest {
    private val spec = ModelSpec.parse(
        """{"schema_version": 1, "name": "t", "input_size": [112, 112], "layout": "NHWC",
            "channel_order": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "embedding_dim": 4}"""
    )

    @Test
    fun optionalFieldsDefaultLikePython() {
        assertEquals("fp32", spec.precision)
        assertEquals(null, spec.threshold)
        assertEquals(null, spec.inputQuant)
    }

    @Test(expected = SpecException::class)
    fun notJsonIsASpecError() {
        ModelSpec.parse("{not json")
    }

    @Test(expected = IllegalArgumentException::class)
    fun degenerateLandmarksAreRejected() {
        Alignment.similarityTransform(DoubleArray(10) { 5.0 }, Alignment.ARCFACE_TEMPLATE)
    }

    @Test
    fun templateLandsOnItselfAndKeepsTheAspectRatio() {
        val m = Alignment.alignmentMatrix(Alignment.ARCFACE_TEMPLATE, 112, 112)
        assertArrayEquals(doubleArrayOf(1.0, 0.0, 0.0, 0.0, 1.0, 0.0), m, 1e-9)
        // 112x96: the central 96 columns at full scale (as runtime.align), not the face squeezed
        val narrow = Alignment.template(112, 96)
        assertEquals(Alignment.ARCFACE_TEMPLATE[0] - 8, narrow[0], 1e-12)
        assertEquals(Alignment.ARCFACE_TEMPLATE[1], narrow[1], 1e-12)
        // 224x112: columns 28..84 scaled by 2 in both directions
        val tall = Alignment.template(224, 112)
        assertEquals((Alignment.ARCFACE_TEMPLATE[0] - 28) * 2, tall[0], 1e-12)
        assertEquals(Alignment.ARCFACE_TEMPLATE[1] * 2, tall[1], 1e-12)
    }

    @Test(expected = IllegalArgumentException::class)
    fun aFaceOfTheWrongSizeIsRejected() {
        Preprocess.normalize(ByteArray(100 * 100 * 3), spec)
    }

    @Test(expected = IllegalStateException::class)
    fun anEmbeddingOfTheWrongSizeIsRejected() {
        Matching.embedding(FloatArray(5), spec)
    }

    @Test(expected = IllegalStateException::class)
    fun verifyingWithoutAThresholdIsRefused() {
        Matching.verify(FloatArray(4) { 1f }, FloatArray(4) { 1f }, spec.threshold)
    }

    @Test
    fun zeroEmbeddingStaysFinite() {
        val n = Matching.l2Normalize(FloatArray(4))
        assertTrue(n.all { it == 0f })
    }

    @Test
    fun uint8BytesAreUnsigned() {
        val tq = TensorQuant(0.5, 128, "uint8")
        assertEquals(63.5f, tq.dequantize(byteArrayOf(255.toByte()))[0], 0f)
        assertEquals(255, tq.quantize(1000f))
        assertEquals(0, tq.quantize(-1000f))
    }
}
