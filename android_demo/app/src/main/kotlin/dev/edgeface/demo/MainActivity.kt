package dev.edgeface.demo

import android.Manifest
import android.content.pm.PackageManager
import android.os.Bundle
import android.widget.Toast
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.core.content.ContextCompat
import dev.edgeface.core.Matching
import dev.edgeface.core.ModelSpec
import dev.edgeface.core.PackException
import dev.edgeface.core.SpecException
import dev.edgeface.demo.databinding.ActivityMainBinding
import org.opencv.android.OpenCVLoader
import org.opencv.core.Core
import org.opencv.core.CvType
import org.opencv.core.Mat
import org.opencv.imgproc.Imgproc
import java.io.File
import java.io.IOException
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Camera frames -> face -> embedding, continuously; "Enroll" keeps the current face's embedding on the
 * device, "Verify" compares the current face with it against the spec's threshold. Per-stage latency is on
 * screen. All the arithmetic is in the core module; this class only owns the camera and the UI.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var ui: ActivityMainBinding
    private lateinit var analysis: ExecutorService
    private var pipeline: FacePipeline? = null
    private lateinit var spec: ModelSpec
    private lateinit var modelKey: String
    private lateinit var enrollment: EnrollmentStore
    private val board = LatencyBoard()
    @Volatile private var latest: FloatArray? = null

    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else ui.status.setText(R.string.camera_denied)
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        ui = ActivityMainBinding.inflate(layoutInflater)
        setContentView(ui.root)
        analysis = Executors.newSingleThreadExecutor()
        enrollment = EnrollmentStore(File(filesDir, "enrollment.json"))
        try {
            check(OpenCVLoader.initLocal()) { "OpenCV native libraries failed to load" }
            pipeline = loadPipeline()
        } catch (e: SpecException) {
            ui.status.text = e.message
            return
        } catch (e: PackException) {
            ui.status.text = "edgeface pack: ${e.message}"
            return
        } catch (e: IllegalStateException) {
            ui.status.text = e.message
            return
        } catch (e: IOException) {
            ui.status.text = "cannot read the edgeface pack: ${e.message}"
            return
        }
        ui.enroll.setOnClickListener { enroll() }
        ui.verify.setOnClickListener { verify() }
        if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) {
            startCamera()
        } else {
            askCamera.launch(Manifest.permission.CAMERA)
        }
    }

    /**
     * The model, its spec sidecar and YuNet come from an edgeface pack (AppPack: the app's storage, else
     * the APK's assets), each checked against the pack's manifest before it is used.
     */
    private fun loadPipeline(): FacePipeline {
        val pack = AppPack.open(this)
        val artifact = pack.manifest.chooseArtifact(BuildConfig.ARTIFACT.takeIf { it.isNotEmpty() })
        spec = ModelSpec.parse(pack.text(artifact.spec))
        // enrollments are bound to the exact model file: another pack's model is refused, not compared
        modelKey = "${artifact.file} sha256 ${pack.manifest.files.getValue(artifact.file).sha256}"
        val threads = Runtime.getRuntime().availableProcessors().coerceAtMost(4)
        val embedder = LiteRtEmbedder(pack.read(artifact.file), spec, threads)
        val detector = YuNetDetector(pack.bytes(pack.manifest.detector))
        ui.status.text = "${artifact.file} (${artifact.precision}) from ${pack.where}"
        return FacePipeline(detector, FaceAligner(spec), embedder)
    }

    private fun startCamera() {
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(ui.preview.surfaceProvider) }
            val frames = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            frames.setAnalyzer(analysis) { image -> image.use { analyze(it) } }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_FRONT_CAMERA, preview, frames)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun analyze(image: ImageProxy) {
        val pipe = pipeline ?: return
        val times = StageTimes()
        val bgr = times.stage("frame") { toUprightBgr(image) }
        val result = pipe.process(bgr, times)
        bgr.release()
        latest = result.embedding
        board.add(times)
        val text = board.render()
        runOnUiThread {
            ui.latency.text = text
            if (result.face == null) ui.status.setText(R.string.no_face)
        }
    }

    /** RGBA camera buffer (rows may be padded) -> upright BGR Mat, the format YuNet and the aligner take. */
    private fun toUprightBgr(image: ImageProxy): Mat {
        val plane = image.planes[0]
        val rgba = Mat(image.height, image.width, CvType.CV_8UC4)
        val row = ByteArray(image.width * 4)
        val buffer = plane.buffer
        for (y in 0 until image.height) {
            buffer.position(y * plane.rowStride)
            buffer.get(row)
            rgba.put(y, 0, row)
        }
        val bgr = Mat()
        Imgproc.cvtColor(rgba, bgr, Imgproc.COLOR_RGBA2BGR)
        rgba.release()
        val code = when (image.imageInfo.rotationDegrees) {
            90 -> Core.ROTATE_90_CLOCKWISE
            180 -> Core.ROTATE_180
            270 -> Core.ROTATE_90_COUNTERCLOCKWISE
            else -> return bgr
        }
        val upright = Mat()
        Core.rotate(bgr, upright, code)
        bgr.release()
        return upright
    }

    private fun enroll() {
        val e = latest ?: return toast(getString(R.string.no_face))
        enrollment.save(modelKey, e)
        ui.status.text = "Enrolled with ${spec.name} (${spec.precision})"
    }

    private fun verify() {
        val enrolled = enrollment.load(modelKey) ?: return toast(getString(R.string.no_enrollment))
        val e = latest ?: return toast(getString(R.string.no_face))
        val threshold = spec.threshold ?: return toast("The model's spec has no verification threshold.")
        val d = Matching.verify(enrolled, e, threshold)
        ui.status.text = "%s  cosine %.3f  (threshold %.3f)".format(
            if (d.match) "MATCH" else "NO MATCH", d.score, d.threshold
        )
    }

    private fun toast(message: String) = Toast.makeText(this, message, Toast.LENGTH_SHORT).show()

    override fun onDestroy() {
        super.onDestroy()
        analysis.execute { pipeline?.close() }  // after the frame in flight, on the thread that uses it
        analysis.shutdown()
    }
}
