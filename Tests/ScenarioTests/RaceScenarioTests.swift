import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// The race scenarios (`scenarios/races/`): several CPU threads on the same device-private
/// pages. Each must pass; before the device-private fault took the page lock before its
/// reference (issue 9.0), the 4- and 8-thread ones livelocked and the process died.
final class RaceScenarioTests: XCTestCase {
    func testRaceScenariosPass() throws {
        let dir = "\(packageRoot)/scenarios/races"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".hmm") }.sorted()
        XCTAssertGreaterThanOrEqual(files.count, 4)
        for f in files {
            XCTAssertEqual(ScenarioInterpreter().run(path: "\(dir)/\(f)"), .passed, f)
        }
    }
}
