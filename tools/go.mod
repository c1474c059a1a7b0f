module github.com/conveyor-ci/conveyor/tools

go 1.26.8
