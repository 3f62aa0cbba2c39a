package dev.edgeface.demo

import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import dev.edgeface.core.Matching
import dev.edgeface.core.ModelSpec
import org.json.JSONObject
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * The whole on-device path (spec, preprocessing, input quantization, LiteRT with XNNPACK, dequantization)
 * on the synthetic pattern image, against the embedding the Python runtime computed from the same model
 * (tests/data/vectors/vectors.json, section of the bundled artifact). int8 kernels on ARM and x86 may round
 * a few intermediate values differently, so the check is a cosine close to 1, not bit equality.
 */
@RunWith(AndroidJUnit4::class)
class PatternEmbeddingTest {
    @Test
    fun patternEmbeddingMatchesPython() {
        val context = InstrumentationRegistry.getInstrumentation().context  // the test APK: the vectors
        val app = InstrumentationRegistry.getInstrumentation().targetContext  // the app APK: the model
        val vectors = JSONObject(context.assets.open("vectors.json").bufferedReader().use { it.readText() })
        val pack = AppPack.open(app)  // the pack the app runs, each file checked against its manifest
        val artifact = pack.manifest.chooseArtifact(BuildConfig.ARTIFACT.takeIf { it.isNotEmpty() })
        val sections = vectors.getJSONArray("artifacts")
        val section = (0 until sections.length()).map { sections.getJSONObject(it) }
            .firstOrNull { it.getString("artifact") == artifact.file }
            ?: throw AssertionError("vectors.json has no section for ${artifact.file}: run tools/make_test_vectors.py with it")
        val spec = ModelSpec.parse(pack.text(artifact.spec))
        val model = pack.bytes(artifact.file)
        val buffer = ByteBuffer.allocateDirect(model.size).order(ByteOrder.nativeOrder())
        buffer.put(model).rewind()
        val embedder = LiteRtEmbedder(buffer, spec, threads = 1)
        val pattern = ByteArray(spec.inputHeight * spec.inputWidth * 3)
        for (y in 0 until spec.inputHeight) for (x in 0 until spec.inputWidth) for (c in 0 until 3) {
            pattern[(y * spec.inputWidth + x) * 3 + c] = ((7 * x + 13 * y + 61 * c + 17) % 256).toByte()
        }
        val got = embedder.embed(pattern, StageTimes())
        embedder.close()
        val want = section.getJSONArray("pattern_embedding")
        val expected = FloatArray(want.length()) { want.getDouble(it).toFloat() }
        val cosine = Matching.cosine(got, expected)
        assertTrue("device vs Python cosine $cosine", cosine > 0.995)
    }
}
