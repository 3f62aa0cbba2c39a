package dev.edgeface.demo

import android.content.Context
import android.content.res.AssetManager
import dev.edgeface.core.DirectoryPack
import dev.edgeface.core.PackManifest
import java.io.File
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.channels.FileChannel

/**
 * The edgeface pack the app runs: the same folder `edgeface export` / `edgeface pack` write (artifacts,
 * specs, YuNet, licences, manifest), taken from the app's storage when one was copied there
 * (`adb push PACK /sdcard/Android/data/dev.edgeface.demo/files/pack`), else from the APK's assets
 * (`assets/pack/`, copied by the build). Every file is checked against the manifest (core's PackManifest)
 * before it is used: the bytes hashed are the bytes handed to LiteRT and OpenCV.
 */
class AppPack private constructor(
    val manifest: PackManifest,
    val where: String,
    private val load: (String) -> ByteBuffer
) {
    /** The verified bytes of `name` (a name the manifest's validation has already accepted). */
    fun read(name: String): ByteBuffer = load(name).also { manifest.verify(name, it) }

    fun text(name: String): String = String(bytes(name), Charsets.UTF_8)

    fun bytes(name: String): ByteArray {
        val b = read(name).duplicate()
        return ByteArray(b.remaining()).also { b.get(it) }
    }

    companion object {
        const val ASSET_DIR = "pack"

        fun open(context: Context): AppPack {
            val storage = context.getExternalFilesDir(null)?.let { File(it, ASSET_DIR) }
            if (storage != null && File(storage, PackManifest.MANIFEST).isFile) {
                val dir = DirectoryPack(storage)  // refuses links and names outside the folder
                return AppPack(dir.manifest, storage.path) { name -> dir.read(name) }
            }
            val assets = context.assets
            val manifest = PackManifest.parse(
                assets.open("$ASSET_DIR/${PackManifest.MANIFEST}").bufferedReader().use { it.readText() }
            )
            return AppPack(manifest, "the app's assets/$ASSET_DIR") { name -> asset(assets, "$ASSET_DIR/$name") }
        }

        /** Models are stored uncompressed (build.gradle.kts noCompress) and memory-mapped; the rest is read. */
        private fun asset(assets: AssetManager, path: String): ByteBuffer {
            if (path.endsWith(".tflite") || path.endsWith(".onnx")) {
                return assets.openFd(path).use { fd ->
                    FileInputStream(fd.fileDescriptor).channel.use {
                        it.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                    }
                }
            }
            return ByteBuffer.wrap(assets.open(path).use { it.readBytes() })
        }
    }
}
