package dev.edgeface.demo

import org.json.JSONArray
import org.json.JSONObject
import java.io.File

/**
 * The enrolled face, kept on the device only. It records which model produced the embedding: embeddings
 * of two different models are not comparable, so verifying against another model's enrollment is refused
 * (as the Python gallery does) rather than producing a meaningless score.
 */
class EnrollmentStore(private val file: File) {
    fun save(model: String, embedding: FloatArray) {
        val json = JSONObject().put("model", model).put("embedding", JSONArray(embedding.map { it.toDouble() }))
        val tmp = File(file.path + ".tmp")
        tmp.writeText(json.toString())
        check(tmp.renameTo(file)) { "cannot write $file" }  // never a half-written enrollment
    }

    /** The enrolled embedding for `model`, or null when nobody (or another model's user) is enrolled. */
    fun load(model: String): FloatArray? {
        if (!file.isFile) return null
        val json = JSONObject(file.readText())
        if (json.getString("model") != model) return null
        val a = json.getJSONArray("embedding")
        return FloatArray(a.length()) { a.getDouble(it).toFloat() }
    }
}
