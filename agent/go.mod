module github.com/conveyor-ci/conveyor/agent

go 1.26.8
