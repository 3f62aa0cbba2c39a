package dev.edgeface.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import java.io.File
import java.io.FileInputStream
import java.io.IOException
import java.nio.ByteBuffer
import java.security.MessageDigest

/**
 * The pack manifest (`edgeface-pack.json`, version 1), the same contract as the Python
 * `edgeface.runtime.pack`: the artifacts with their spec sidecars, the YuNet detector, the licences, and
 * the SHA-256 and size of every file.
 *
 * The manifest is data from outside the app, so it is validated like the Python reader validates it:
 * every file name is relative, at most one folder deep, with no `..`, hidden, absolute or drive-letter
 * part, before any path is built from it; and every file the app uses is hashed before it is used, so a
 * truncated or changed file stops the app with a message instead of running a different model.
 * (tests/data/vectors/pack is a pack written in the Python format; PackTest reads it.)
 */
class PackManifest private constructor(
    val edgefaceVersion: String,
    val defaultArtifact: String,
    val artifacts: List<PackArtifact>,
    val detector: String,
    val licenses: List<PackLicense>,
    val files: Map<String, PackFile>,
    /** A face-mesh landmark model the pack carries (optional; the app does not use it yet). */
    val landmarker: String? = null
) {
    /**
     * The artifact to run on Android (LiteRT runs `.tflite`): the one named, else the pack's default when
     * it is a `.tflite`, else the best `.tflite` (int8 first, as the Python writer ranks them).
     */
    fun chooseArtifact(name: String? = null, format: String = "tflite"): PackArtifact {
        if (name != null) {
            return artifacts.firstOrNull { it.file == name }
                ?: throw PackException("the pack has no artifact '$name' (it holds ${artifacts.joinToString { it.file }})")
        }
        val default = artifacts.first { it.file == defaultArtifact }
        if (default.format == format) return default
        return artifacts.filter { it.format == format }.minBy { PRECISION_RANK.indexOf(it.precision) }
            ?: throw PackException("the pack holds no .$format artifact (it holds ${artifacts.joinToString { it.file }})")
    }

    fun checkSize(name: String, size: Long) {
        val want = files[name] ?: throw PackException("'$name' is not in the pack's manifest")
        if (size != want.size) {
            throw PackException(
                "$name is $size bytes but the manifest says ${want.size}: the file is truncated or was changed " +
                    "after packing; copy the pack again"
            )
        }
    }

    /** Size and SHA-256 of `data` (the bytes of file `name`) against the manifest. */
    fun verify(name: String, data: ByteBuffer) {
        val bytes = data.duplicate()
        checkSize(name, bytes.remaining().toLong())
        val want = files.getValue(name)
        val digest = MessageDigest.getInstance("SHA-256")
        digest.update(bytes)
        if (hex(digest.digest()) != want.sha256) {
            throw PackException(
                "$name does not match its SHA-256 in the manifest (the file was changed or damaged after " +
                    "packing); copy the pack again"
            )
        }
    }

    companion object {
        const val MANIFEST = "edgeface-pack.json"
        const val FORMAT = "edgeface-pack"
        const val VERSION = 1
        const val MAX_MANIFEST_BYTES = 1 shl 20
        const val MAX_FILES = 1000
        const val MAX_FILE_BYTES = 1L shl 36
        private const val MAX_NAME_CHARS = 200
        private val PRECISIONS = listOf("fp32", "w8a8", "w6a6", "mixed")
        private val PRECISION_RANK = listOf("w8a8", "w6a6", "mixed", "fp32")
        private val FORMATS = mapOf("onnx" to "onnx", "tflite" to "tflite")
        private val SHA256 = Regex("[0-9a-f]{64}")
        private val BAD_CHARS = Regex("[/\\\\:\\x00-\\x1f\\x7f]")

        /**
         * A file name from a manifest, refused unless it is plainly a file inside the pack (the rule of
         * `edgeface.runtime.pack.check_name`): `/`-separated, at most `depth` parts, none empty or `.`-led,
         * none holding a backslash, colon or control character.
         */
        fun checkName(name: Any?, depth: Int = 2): String {
            if (name !is String || name.length == 0 || name.length > MAX_NAME_CHARS) {
                fail("file name $name is not a pack file name")
            }
            val parts = name.split("/")
            if (parts.size > depth || parts.any { it.length == 0 || it.startsWith(".") || BAD_CHARS.containsMatchIn(it) }) {
                fail("file name '$name' is not allowed in a pack (names are relative, at most $depth level(s) deep, " +
                    "with no '..', hidden, absolute or drive-letter parts)")
            }
            return name
        }

        fun parse(json: String): PackManifest {
            val data = try {
                JSONObject(json)
            } catch (e: JSONException) {
                fail("not a valid pack manifest (${e.message})")
            }
            return fromJson(data)
        }

        fun fromJson(data: JSONObject): PackManifest {
            if (data.opt("format") != FORMAT) fail("not an edgeface pack manifest (no \"format\": \"$FORMAT\")")
            val version = data.opt("version")
            if (version !is Int) fail("'version' must be an integer")
            if (version > VERSION) fail("pack version $version was written by a newer edgeface; this app reads version $VERSION")
            if (version < 1) fail("'version' $version is not a pack version")
            val filesRaw = data.opt("files") as? JSONObject ?: fail("'files' must map file names to their sha256 and size")
            if (filesRaw.length() == 0 || filesRaw.length() > MAX_FILES) fail("'files' must list 1 to $MAX_FILES files")
            val files = LinkedHashMap<String, PackFile>()
            for (name in filesRaw.keys()) {
                checkName(name)
                if (name == MANIFEST) fail("'files' lists the manifest $MANIFEST itself")
                val entry = filesRaw.opt(name) as? JSONObject
                if (entry == null || entry.length() != 2 || !entry.has("sha256") || !entry.has("size")) {
                    fail("'files' entry of '$name' must be {\"sha256\": ..., \"size\": ...}")
                }
                val sha = entry.opt("sha256")
                if (sha !is String || !SHA256.matches(sha)) fail("sha256 of '$name' is not 64 lowercase hex digits")
                val size = entry.opt("size")
                if ((size !is Int && size !is Long) || (size as Number).toLong() < 0 || size.toLong() > MAX_FILE_BYTES) {
                    fail("size of '$name' must be an integer in [0, $MAX_FILE_BYTES]")
                }
                files[name] = PackFile(sha, (size as Number).toLong())
            }
            fun listed(name: Any?, what: String, depth: Int = 1): String {
                val n = checkName(name, depth)
                if (n !in files) fail("$what '$n' is not among the manifest's files")
                return n
            }
            val artsRaw = data.opt("artifacts") as? JSONArray
            if (artsRaw == null || artsRaw.length() == 0) fail("'artifacts' must be a non-empty list")
            val artifacts = (0 until artsRaw.length()).map { i ->
                val a = artsRaw.opt(i) as? JSONObject ?: fail("each of 'artifacts' must be an object")
                val file = listed(a.opt("file"), "artifact")
                val suffix = file.substringAfterLast('.', "").toLowerCase()
                val format = FORMATS[suffix]
                if (format == null || a.opt("format") != format) {
                    fail("artifact '$file' must be .onnx (format onnx) or .tflite (format tflite)")
                }
                val spec = listed(a.opt("spec"), "spec of $file")
                val precision = a.opt("precision")
                if (precision !is String || precision !in PRECISIONS) {
                    fail("precision of '$file' must be one of ${PRECISIONS.joinToString()}")
                }
                val dim = a.opt("embedding_dim")
                if (dim !is Int || dim < 1 || dim > 65536) fail("embedding_dim of '$file' must be an integer in [1, 65536]")
                val model = a.opt("model")
                if (model !is String || model.length == 0 || model.length > 512) fail("'model' of '$file' must be a non-empty string")
                PackArtifact(file, spec, format, model, precision, dim)
            }
            if (artifacts.map { it.file }.toSet().size != artifacts.size) fail("an artifact is listed twice")
            val default = data.opt("default_artifact")
            if (artifacts.none { it.file == default }) fail("default_artifact '$default' is not one of the pack's artifacts")
            val det = data.opt("detector") as? JSONObject
            if (det == null || det.opt("kind") != "yunet") fail("'detector' must be {\"file\": ..., \"kind\": \"yunet\"}")
            val detector = listed(det.opt("file"), "detector")
            if (!detector.toLowerCase().endsWith(".onnx")) fail("detector '$detector' must be a YuNet .onnx file")
            val mesh = data.opt("landmarker")
            val landmarker = if (mesh == null || mesh == JSONObject.NULL) null else {
                val m = mesh as? JSONObject
                if (m == null || m.opt("kind") != "face-mesh") fail("'landmarker' must be {\"file\": ..., \"kind\": \"face-mesh\"}")
                val f = listed(m.opt("file"), "landmarker")
                if (!f.toLowerCase().endsWith(".tflite")) fail("landmarker '$f' must be a .tflite file")
                f
            }
            val licRaw = if (data.has("licenses")) data.opt("licenses") as? JSONArray ?: fail("'licenses' must be a list") else JSONArray()
            val models = artifacts.map { it.file }.toSet() + detector + listOfNotNull(landmarker)
            val licenses = (0 until licRaw.length()).map { i ->
                val lic = licRaw.opt(i) as? JSONObject ?: fail("each of 'licenses' must be an object")
                val file = listed(lic.opt("file"), "licence", depth = 2)
                val covers = lic.opt("covers") as? JSONArray
                if (covers == null || covers.length() == 0 || (0 until covers.length()).any { covers.opt(it) !in models }) {
                    fail("licence '$file' must cover a list of the pack's artifacts or models")
                }
                val origin = lic.opt("origin")
                if (origin !is String || origin.length == 0) fail("licence '$file' needs its origin")
                PackLicense(file, (0 until covers.length()).map { covers.getString(it) }, origin)
            }
            val version0 = data.opt("edgeface_version")
            if (version0 !is String || version0.length == 0 || version0.length > 64) fail("'edgeface_version' must be a string")
            return PackManifest(version0, default as String, artifacts, detector, licenses, files, landmarker)
        }

        private fun hex(bytes: ByteArray): String = bytes.joinToString("") { String.format("%02x", it) }

        private fun fail(message: String): Nothing = throw PackException("invalid pack manifest: $message")
    }
}

data class PackFile(val sha256: String, val size: Long)

data class PackArtifact(
    val file: String,
    val spec: String,
    val format: String,
    val model: String,
    val precision: String,
    val embeddingDim: Int
)

data class PackLicense(val file: String, val covers: List<String>, val origin: String)

/** A user-facing problem with a pack: shown on screen as one line, never a crash. */
class PackException(message: String) : IllegalArgumentException(message)

/**
 * A pack folder on the device's storage (copied with `adb push`, or the export's output folder on a JVM).
 * `read` returns a file's bytes only after they matched the manifest: the bytes checked are the bytes used.
 * A file reached through a symbolic link is refused, wherever the link points.
 */
class DirectoryPack(root: File) {
    private val root: File = root.canonicalFile
    val manifest: PackManifest

    init {
        val file = File(this.root, PackManifest.MANIFEST)
        if (!file.isFile) throw PackException("${this.root} is not an edgeface pack (no ${PackManifest.MANIFEST})")
        if (file.canonicalFile != file.absoluteFile) throw PackException("${PackManifest.MANIFEST} is a symbolic link")
        if (file.length() > PackManifest.MAX_MANIFEST_BYTES) throw PackException("${PackManifest.MANIFEST} is too large")
        manifest = PackManifest.parse(file.readText())
    }

    /** The file behind `name`, checked to be a regular file inside the pack with no link on the way. */
    fun file(name: String): File {
        if (name !in manifest.files) throw PackException("'$name' is not in the pack's manifest")
        val file = File(root, name)
        if (!file.exists()) throw PackException("$name is missing; copy the whole pack folder")
        if (file.canonicalFile != file.absoluteFile) {
            throw PackException("$name is a symbolic link; files in a pack must be regular files inside it")
        }
        if (!file.isFile) throw PackException("$name is not a regular file")
        return file
    }

    fun read(name: String): ByteBuffer {
        val file = file(name)
        manifest.checkSize(name, file.length())  // before reading: a file may be far larger than it should be
        val bytes = try {
            FileInputStream(file).use { it.readBytes() }
        } catch (e: IOException) {
            throw PackException("cannot read $name (${e.message})")
        }
        val buffer = ByteBuffer.wrap(bytes)
        manifest.verify(name, buffer)
        return buffer
    }

    /** Every listed file (what `edgeface pack --check` does). */
    fun verifyAll() {
        for (name in manifest.files.keys) read(name)
    }
}
