import Foundation
import XCTest

/// `Package.swift` declares, for every target, exactly the modules its sources import: a
/// missing dependency builds only by accident (through another target), an extra one blurs
/// the layering. System modules are not declared; an executable target may be listed only to
/// have it built (the CLI tests run `hmm` as a subprocess).
final class PackageImportsTests: XCTestCase {
    static let system: Set<String> = ["Foundation", "XCTest", "Glibc", "Darwin", "Synchronization", "PackageDescription"]

    func testEveryTargetDeclaresExactlyWhatItImports() throws {
        let manifest = try String(contentsOfFile: "\(packageRoot)/Package.swift", encoding: .utf8)
        // `.target(name: "X", dependencies: [ … ]` and its executable/test forms.
        let decl = try NSRegularExpression(pattern: #"\.(target|executableTarget|testTarget)\(\s*name:\s*"(\w+)"(?:,\s*dependencies:\s*\[([^\]]*)\])?"#)
        let ns = manifest as NSString
        var declared: [String: (kind: String, deps: Set<String>)] = [:]
        for m in decl.matches(in: manifest, range: NSRange(location: 0, length: ns.length)) {
            let kind = ns.substring(with: m.range(at: 1)), name = ns.substring(with: m.range(at: 2))
            var deps: Set<String> = []
            if m.range(at: 3).location != NSNotFound {
                let list = ns.substring(with: m.range(at: 3))
                // `.product(name: "ArgumentParser", …)` names the module; plain strings are targets.
                let strings = try NSRegularExpression(pattern: #"(?:\.product\(name:\s*)?"(\w+)""#)
                let ls = list as NSString
                for d in strings.matches(in: list, range: NSRange(location: 0, length: ls.length)) {
                    deps.insert(ls.substring(with: d.range(at: 1))) // a package name has '-': no match
                }
            }
            declared[name] = (kind, deps)
        }
        XCTAssertGreaterThanOrEqual(declared.count, 14, "parsed \(declared.keys.sorted())")
        let executables = Set(declared.filter { $0.value.kind == "executableTarget" }.keys)
        var problems: [String] = []
        for (name, info) in declared.sorted(by: { $0.key < $1.key }) {
            let dir = info.kind == "testTarget" ? "Tests/\(name)" : "Sources/\(name)"
            // A target elsewhere (a `path:`) would be checked against nothing: refuse it.
            var isDir: ObjCBool = false
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(packageRoot)/\(dir)", isDirectory: &isDir) && isDir.boolValue,
                          "\(name): sources not in \(dir)")
            let imports = try importedModules(under: "\(packageRoot)/\(dir)")
            let missing = imports.subtracting(info.deps).subtracting(Self.system)
            // Only a test target may list an executable it does not import (to have it built).
            let unused = info.deps.subtracting(imports).subtracting(info.kind == "testTarget" ? executables : [])
            if !missing.isEmpty { problems.append("\(name) imports \(missing.sorted()) without declaring them") }
            if !unused.isEmpty { problems.append("\(name) declares \(unused.sorted()) but imports none of them") }
        }
        XCTAssertEqual(problems, [])
    }

    /// The modules named by the import declarations of the Swift files under `dir`, whatever
    /// their attributes and access level (`@testable`, `@preconcurrency`, `public`, …) or kind
    /// (`import struct M.T` names M). A C target has none.
    func importedModules(under dir: String) throws -> Set<String> {
        guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
        let decl = try NSRegularExpression(pattern: #"^\s*(?:@\w+\s+)*(?:(?:public|package|internal|fileprivate|private)\s+)?import\s+(?:(?:struct|class|enum|protocol|typealias|func|var|let)\s+)?(\w+)"#,
                                           options: .anchorsMatchLines)
        var out: Set<String> = []
        for case let f as String in e where f.hasSuffix(".swift") {
            let text = try String(contentsOfFile: "\(dir)/\(f)", encoding: .utf8) as NSString
            for m in decl.matches(in: text as String, range: NSRange(location: 0, length: text.length)) {
                out.insert(text.substring(with: m.range(at: 1)))
            }
        }
        return out
    }

    /// The import parser itself, on the forms it must recognise and the lines it must not.
    func testImportParserRecognisesEveryForm() throws {
        let dir = NSTemporaryDirectory() + "imports-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Built from quoted lines, so this file itself declares none of them.
        let lines = ["import A", "@testable import B", "@preconcurrency import C", "public import D",
                     "@_implementationOnly import E", "import struct F.Thing", "  import G",
                     "// import NotThis", "let s = \"x import NotThat\""]
        try lines.joined(separator: "\n").write(toFile: dir + "/x.swift", atomically: true, encoding: .utf8)
        XCTAssertEqual(try importedModules(under: dir), ["A", "B", "C", "D", "E", "F", "G"])
    }
}
