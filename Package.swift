// swift-tools-version:6.0
import PackageDescription

// Every target lists exactly the modules its sources import (Tests/ScenarioTests/
// PackageImportsTests.swift checks it), so the layering reads from here.

/// No unsafe flags (SwiftPM refuses them in a versioned dependency): the hot paths avoid
/// dynamic exclusivity checks by using structs, raw pointers and `let`s instead.
let fast: [SwiftSetting] = []

let package = Package(
    name: "swift-hmm",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "MMSync", targets: ["MMSync"]),
        .library(name: "MMCore", targets: ["MMCore"]),
        .library(name: "HMM", targets: ["HMM"]),
        .executable(name: "hmm", targets: ["hmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // `swift package generate-documentation` (DocC for MMCore and HMM).
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.4.0"),
    ],
    targets: [
        .target(name: "MMSync", dependencies: ["MMArch"], swiftSettings: fast),
        .target(name: "MMArch"),
        .target(name: "MMCore", dependencies: ["MMSync", "MMArch"], swiftSettings: fast),
        .target(name: "HMM", dependencies: ["MMSync", "MMArch", "MMCore"], swiftSettings: fast),
        .target(name: "Devices", dependencies: ["MMSync", "MMCore", "HMM"], swiftSettings: fast),
        // The explorer (issue 13): deterministic interleavings of the model's threads.
        .target(name: "Explorer", dependencies: ["MMSync"], swiftSettings: fast),
        .target(name: "Conformance", dependencies: ["MMSync", "MMCore", "HMM", "Devices"], swiftSettings: fast),
        .target(name: "Scenario", dependencies: ["MMSync", "MMCore", "HMM", "Devices"], swiftSettings: fast),
        .target(name: "NativeBaselines"),
        // Run reports: HTML with SVG plots, Chrome trace-event / Perfetto JSON (issue 16).
        .target(name: "Report", dependencies: ["Devices", "Conformance"], swiftSettings: fast),
        // The real Linux 7.2 beside the model (issue 18): runs tools/kernel-oracle and compares.
        .target(name: "KernelOracle"),
        // The host kernel's side of the differential test (issue 9.9): plays system calls.
        .executableTarget(name: "HostOracle"),
        .executableTarget(
            name: "hmm",
            dependencies: [
                "MMSync", "MMCore", "HMM", "Devices", "Conformance", "Scenario", "Explorer", "NativeBaselines", "KernelOracle", "Report",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: fast),
        .testTarget(name: "MMSyncTests", dependencies: ["MMSync"]),
        .testTarget(name: "ExplorerTests", dependencies: ["Explorer", "MMSync", "MMCore"]),
        .testTarget(name: "MMCoreTests", dependencies: ["MMCore", "MMSync", "HMM", "Devices"]),
        .testTarget(name: "HMMTests", dependencies: ["MMCore", "MMSync", "HMM", "Devices", "Conformance"]),
        // `hmm` is a dependency so the tests that run it as a subprocess find it built.
        .testTarget(name: "ScenarioTests", dependencies: ["Scenario", "Conformance", "MMCore", "MMSync", "KernelOracle", "Devices", "Report", "hmm"]),
    ],
    swiftLanguageModes: [.v6]
)
