package dev.edgeface.core

import org.json.JSONObject
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Test
import java.io.File
import java.nio.file.Files

/**
 * The pack format vector (tests/data/vectors/pack, a manifest in exactly the Python writer's format;
 * tests/test_pack_vectors.py checks that side) read by the Kotlin port: parsed, the artifact Android runs
 * chosen, every file hashed; then copies of it damaged the ways the Python tests damage a pack.
 */
class PackTest {
    private val vectors = File(System.getProperty("edgeface.vectors") ?: "../../tests/data/vectors")
    private val fixture = File(vectors, "pack")
    private val scratch: File = Files.createTempDirectory("edgeface-pack-test").toFile()

    @After
    fun cleanUp() {
        scratch.deleteRecursively()
    }

    private fun copy(): File {
        val dest = File(scratch, "copy-${System.nanoTime()}")
        fixture.copyRecursively(dest)
        return dest
    }

    private fun expectPackError(contains: String, block: () -> Unit) {
        try {
            block()
            fail("expected a PackException containing '$contains'")
        } catch (e: PackException) {
            assertTrue("'${e.message}' does not contain '$contains'", e.message!!.contains(contains))
        }
    }

    @Test
    fun thePythonWrittenPackParsesVerifiesAndGivesTheTfliteArtifact() {
        val pack = DirectoryPack(fixture)
        val m = pack.manifest
        assertEquals("mobilefacenet_int8.onnx", m.defaultArtifact)  // Python's default: ONNX runs in the base install
        val chosen = m.chooseArtifact()
        assertEquals("mobilefacenet_int8.tflite", chosen.file)  // Android runs LiteRT
        assertEquals("mobilefacenet_int8.tflite.json", chosen.spec)
        assertEquals("face_detection_yunet_stub.onnx", m.detector)
        assertEquals(7, m.files.size)  // every file but the manifest
        pack.verifyAll()
        // the spec sidecar in the pack is a real exported spec, and parses as one
        val spec = ModelSpec.parse(String(pack.read(chosen.spec).array(), Charsets.UTF_8))
        assertEquals(128, spec.embeddingDim)
        assertEquals(listOf("mobilefacenet_int8.onnx", "mobilefacenet_int8.tflite"), m.licenses[0].covers)
        expectPackError("has no artifact 'nope.tflite'") { m.chooseArtifact("nope.tflite") }
        assertEquals("mobilefacenet_int8.onnx", m.chooseArtifact("mobilefacenet_int8.onnx").file)
    }

    @Test
    fun aChangedTruncatedMissingOrLinkedFileIsRefused() {
        var p = copy()
        val model = File(p, "mobilefacenet_int8.tflite")
        val bytes = model.readBytes()
        bytes[3] = (bytes[3].toInt() xor 1).toByte()
        model.writeBytes(bytes)
        expectPackError("does not match its SHA-256") { DirectoryPack(p).read("mobilefacenet_int8.tflite") }

        p = copy()
        File(p, "mobilefacenet_int8.tflite.json").writeText("{}")
        expectPackError("is 2 bytes but the manifest says") { DirectoryPack(p).read("mobilefacenet_int8.tflite.json") }

        p = copy()
        File(p, "face_detection_yunet_stub.onnx").delete()
        expectPackError("is missing") { DirectoryPack(p).read("face_detection_yunet_stub.onnx") }

        p = copy()
        val detector = File(p, "face_detection_yunet_stub.onnx")
        val outside = File(scratch, "outside.onnx")
        detector.copyTo(outside)
        detector.delete()
        Files.createSymbolicLink(detector.toPath(), outside.toPath())
        expectPackError("symbolic link") { DirectoryPack(p).read("face_detection_yunet_stub.onnx") }

        p = copy()
        val licenses = File(p, "licenses")
        val moved = File(scratch, "licenses-elsewhere")
        licenses.copyRecursively(moved)
        licenses.deleteRecursively()
        Files.createSymbolicLink(licenses.toPath(), moved.toPath())
        expectPackError("symbolic link") { DirectoryPack(p).verifyAll() }
    }

    private fun withManifest(change: (JSONObject) -> Unit): JSONObject {
        val m = JSONObject(File(fixture, PackManifest.MANIFEST).readText())
        change(m)
        return m
    }

    @Test
    fun aManifestCannotNameAFileOutsideThePack() {
        for (name in listOf("../outside.onnx", "/etc/passwd", "a/../../x.onnx", ".hidden.onnx", "C:x.onnx", "a\\b.onnx", "")) {
            val m = withManifest {
                val files = it.getJSONObject("files")
                files.put(name, files.remove("face_detection_yunet_stub.onnx"))
                it.getJSONObject("detector").put("file", name)
            }
            expectPackError("file name") { PackManifest.fromJson(m) }
        }
    }

    @Test
    fun anOptionalLandmarkModelIsReadAndChecked() {
        assertNull(PackManifest.fromJson(withManifest { }).landmarker)
        val m = withManifest {
            val files = it.getJSONObject("files")
            files.put("face_landmark.tflite", JSONObject(files.getJSONObject("licenses/LICENSE.yunet").toString()))
            it.put("landmarker", JSONObject().put("file", "face_landmark.tflite").put("kind", "face-mesh"))
            it.getJSONArray("licenses").getJSONObject(0).getJSONArray("covers").put("face_landmark.tflite")
        }
        assertEquals("face_landmark.tflite", PackManifest.fromJson(m).landmarker)
        m.getJSONObject("landmarker").put("kind", "python")
        expectPackError("'landmarker' must be") { PackManifest.fromJson(m) }
    }

    @Test
    fun malformedManifestsAreRefusedNamingTheProblem() {
        val cases = listOf<Pair<String, (JSONObject) -> Unit>>(
            "written by a newer edgeface" to { m -> m.put("version", 2) },
            "not an edgeface pack manifest" to { m -> m.put("format", "zip") },
            "64 lowercase hex" to { m -> m.getJSONObject("files").getJSONObject("licenses/LICENSE.yunet").put("sha256", "abc") },
            "must be an integer in" to { m -> m.getJSONObject("files").getJSONObject("licenses/LICENSE.yunet").put("size", -1) },
            "default_artifact" to { m -> m.put("default_artifact", "x.onnx") },
            "is not among the manifest's files" to { m -> m.getJSONArray("artifacts").getJSONObject(0).put("file", "y.onnx") },
            "must cover a list" to { m -> m.getJSONArray("licenses").getJSONObject(0).put("covers", org.json.JSONArray(listOf("z.onnx"))) }
        )
        for ((message, change) in cases) {
            expectPackError(message) { PackManifest.fromJson(withManifest(change)) }
        }
        expectPackError("not a valid pack manifest") { PackManifest.parse("{not json") }
    }
}
