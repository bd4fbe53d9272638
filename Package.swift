// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "swift-hmm",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MMCore", targets: ["MMCore"]),
        .library(name: "HMM", targets: ["HMM"]),
        .executable(name: "hmm", targets: ["hmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .target(name: "MMSync"),
        .target(name: "MMCore", dependencies: ["MMSync"]),
        .target(name: "HMM", dependencies: ["MMCore"]),
        .target(name: "Devices", dependencies: ["HMM"]),
        .target(name: "Explorer", dependencies: ["MMSync", "MMCore", "HMM", "Devices"]),
        .target(name: "Conformance", dependencies: ["MMCore", "HMM", "Devices"]),
        .target(name: "Scenario", dependencies: ["MMCore", "HMM", "Devices"]),
        .target(name: "NativeBaselines"),
        .executableTarget(
            name: "hmm",
            dependencies: [
                "MMCore", "HMM", "Devices", "Conformance", "Scenario", "Explorer", "NativeBaselines",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "MMSyncTests", dependencies: ["MMSync"]),
        .testTarget(name: "MMCoreTests", dependencies: ["MMCore", "MMSync"]),
        .testTarget(name: "HMMTests", dependencies: ["MMCore", "MMSync", "HMM", "Devices", "Conformance"]),
        .testTarget(name: "ScenarioTests", dependencies: ["Scenario", "Conformance", "MMCore", "MMSync"]),
    ],
    swiftLanguageModes: [.v5]
)
