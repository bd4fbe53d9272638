import XCTest
@testable import Conformance
@testable import MMCore
@testable import Scenario
import MMSync

/// Every kernel selftest exists as a scenario, and the scenario and the Swift suite agree.
final class SelftestScenarioTests: XCTestCase {
    func testScenariosAgreeWithTheSwiftSuite() throws {
        var agreed = 0
        for variant in Variant.allCases {
            for t in SelftestSuite.all {
                let path = "\(packageRoot)/scenarios/selftests/\(variant.rawValue).\(t.name).hmm"
                let scenario = ScenarioInterpreter().run(path: path)
                let swift: ScenarioOutcome = t.needs != nil ? .skipped("needs huge pages (\(t.needs!))") : (t.run(variant).map { .failed($0.description) } ?? .passed)
                XCTAssertEqual(scenario, swift, "\(variant.rawValue).\(t.name)")
                if scenario == swift { agreed += 1 }
            }
        }
        XCTAssertEqual(agreed, 2 * SelftestSuite.all.count)
    }
}
