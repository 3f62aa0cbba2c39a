plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

// The exported model, its spec sidecar and the YuNet detector are not committed (they are build outputs
// and shared data); they are copied into the APK's assets from the repository's artifacts/ folder and
// ../shared/models at build time. Run the README's export command first.
val modelName = providers.gradleProperty("edgeface.model").getOrElse("mobilefacenet_int8.tflite")
val generatedAssets = layout.buildDirectory.dir("generated/edgefaceAssets")
val copyEdgefaceAssets by tasks.registering(Copy::class) {
    val artifacts = rootDir.resolve("../artifacts")
    val shared = rootDir.resolve("../../shared/models")
    from(artifacts) { include(modelName, "$modelName.json") }
    from(shared) { include("face_detection_yunet_2026may.onnx") }
    into(generatedAssets)
    doLast {
        val missing = listOf(modelName, "$modelName.json", "face_detection_yunet_2026may.onnx")
            .filterNot { generatedAssets.get().file(it).asFile.isFile }
        check(missing.isEmpty()) { "missing assets $missing: export the model (README) and keep ../shared beside the repo" }
    }
}

android {
    namespace = "dev.edgeface.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.edgeface.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
        testInstrumentationRunner = "androidx.test.runner.AndroidJUnitRunner"
        buildConfigField("String", "MODEL_ASSET", "\"$modelName\"")
    }

    buildFeatures {
        buildConfig = true
        viewBinding = true
    }

    sourceSets {
        getByName("main").assets.srcDir(generatedAssets)
        // The on-device test compares the interpreter's output with the shared vectors.
        getByName("androidTest").assets.srcDir(rootDir.resolve("../tests/data/vectors"))
    }

    androidResources {
        noCompress += listOf("tflite", "onnx")  // memory-mapped straight from the APK
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }

    kotlinOptions {
        jvmTarget = "17"
    }
}

tasks.named("preBuild") { dependsOn(copyEdgefaceAssets) }

dependencies {
    implementation(project(":core"))
    implementation(libs.androidx.core.ktx)
    implementation(libs.androidx.appcompat)
    implementation(libs.androidx.lifecycle.runtime)
    implementation(libs.kotlinx.coroutines.android)
    implementation(libs.camerax.core)
    implementation(libs.camerax.camera2)
    implementation(libs.camerax.lifecycle)
    implementation(libs.camerax.view)
    implementation(libs.litert)
    implementation(libs.opencv)

    androidTestImplementation(libs.androidx.test.ext.junit)
    androidTestImplementation(libs.androidx.test.runner)
}
