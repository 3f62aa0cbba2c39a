plugins {
    alias(libs.plugins.android.application)
    alias(libs.plugins.kotlin.android)
}

// The app runs an edgeface pack (artifacts, spec sidecars, YuNet, licences, manifest with SHA-256s): by
// default the folder the README's export writes, ../artifacts, copied whole into the APK's assets/pack/.
// -Pedgeface.pack=DIR takes another pack folder (e.g. a small one: `edgeface pack artifacts/M.tflite -o DIR`),
// -Pedgeface.artifact=NAME.tflite another artifact of it. Nothing is committed or downloaded; the app
// checks every file against the manifest when it starts (AppPack), as the Python runtime does.
val packDir = rootDir.resolve(providers.gradleProperty("edgeface.pack").getOrElse("../artifacts"))
val artifactName = providers.gradleProperty("edgeface.artifact").getOrElse("")
val generatedAssets = layout.buildDirectory.dir("generated/edgefaceAssets")
val copyEdgefaceAssets by tasks.registering(Copy::class) {
    from(packDir) {
        exclude(".*", "**/.*")  // an interrupted writer's staging folder is not part of the pack
        into("pack")
    }
    into(generatedAssets)
    doLast {
        check(generatedAssets.get().file("pack/edgeface-pack.json").asFile.isFile) {
            "no edgeface pack in $packDir: run the README's export (its output folder is a pack) or pass -Pedgeface.pack=DIR"
        }
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
        buildConfigField("String", "ARTIFACT", "\"$artifactName\"")  // "": the pack's .tflite (PackManifest)
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
